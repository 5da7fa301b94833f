# ruff: noqa: UP031  (JSON text with braces reads best with %-formatting)
"""Hostile JSON gets a 4xx problem naming the item and field, in every body: never a 5xx, never a write.

Each of these used to answer 500: Postgres refuses NUL at INSERT, a lone surrogate cannot be
encoded, json.loads raises RecursionError on deep nesting and ValueError on a 5,001-digit integer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import jsonbody
from orchestrator.models import Batch, Delivery, Job
from orchestrator.schedule_models import Schedule
from orchestrator.settings import Settings
from orchestrator.webhook_urls import attempt_token

MODEL = "fal-ai/flux/schnell"
DEEP = "[" * 200_000 + "]" * 200_000
BIG = "9" * 5001

# (name, the item's JSON text with one hostile value, the field the problem must name)
CASES = [
    ("nul-in-prompt", '{"custom_id": "c1", "model": "%s", "prompt": "a\\u0000b"}' % MODEL, "prompt", "c1"),
    ("nul-in-custom-id", '{"custom_id": "c\\u0000", "model": "%s", "prompt": "a"}' % MODEL, "custom_id", None),
    ("lone-surrogate", '{"custom_id": "c1", "model": "%s", "prompt": "\\ud800"}' % MODEL, "prompt", "c1"),
    ("deep-nesting", '{"custom_id": "c1", "model": "%s", "prompt": "a", "native": {"x": %s}}' % (MODEL, DEEP),
     "native.x", "c1"),
    # Past MAX_DEPTH but well within what json.loads itself can parse.
    ("nested-past-the-limit", '{"custom_id": "c1", "model": "%s", "prompt": "a", "native": {"x": %s}}'
     % (MODEL, "[" * 100 + "]" * 100), "native.x", "c1"),
    ("huge-integer", '{"custom_id": "c1", "model": "%s", "prompt": "a", "seed": %s}' % (MODEL, BIG), "seed", "c1"),
    ("nan", '{"custom_id": "c1", "model": "%s", "prompt": "a", "guidance": NaN}' % MODEL, "guidance", "c1"),
    ("nul-in-key", '{"custom_id": "c1", "model": "%s", "prompt": "a", "native": {"k\\u0000": 1}}' % MODEL,
     "native.k\\u0000", "c1"),
]
GOOD = '{"custom_id": "ok", "model": "%s", "prompt": "fine"}' % MODEL
IDS = [c[0] for c in CASES]


def _nothing_written(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Batch)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(Schedule)) == 0


def _problem(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code in (400, 422), resp.text[:500]
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == resp.status_code and body["errors"]
    return dict(body["errors"][0])


def _field_matches(got: str, expected: str) -> bool:
    # Deep nesting names where it goes too deep: the path starts at the hostile field.
    return got == expected or got.startswith(expected + ".")


@pytest.mark.parametrize(("name", "item", "field", "custom_id"), CASES, ids=IDS)
def test_json_batch_body(http: httpx.Client, sessions: sessionmaker[Session], name: str, item: str, field: str,
                         custom_id: str | None) -> None:
    body = '{"items": [%s, %s]}' % (GOOD, item)
    err = _problem(http.post("/v1/batches", content=body, headers={"Content-Type": "application/json"}))
    assert err["position"] == 1 and _field_matches(err["field"], field) and err["custom_id"] == custom_id, err
    _nothing_written(sessions)


@pytest.mark.parametrize(("name", "item", "field", "custom_id"), CASES, ids=IDS)
def test_jsonl_batch_body(http: httpx.Client, sessions: sessionmaker[Session], name: str, item: str, field: str,
                          custom_id: str | None) -> None:
    body = f"{GOOD}\n{GOOD.replace('ok', 'ok2')}\n{item}\n"
    err = _problem(http.post("/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"}))
    assert err["position"] == 2 and _field_matches(err["field"], field) and err["custom_id"] == custom_id, err
    assert "line 3" in err["message"]
    _nothing_written(sessions)


@pytest.mark.parametrize(("name", "item", "field", "custom_id"), CASES, ids=IDS)
def test_schedule_template(http: httpx.Client, sessions: sessionmaker[Session], name: str, item: str, field: str,
                           custom_id: str | None) -> None:
    body = '{"name": "nightly", "cron": "0 2 * * *", "template": {"items": [%s]}}' % item
    err = _problem(http.post("/v1/schedules", content=body, headers={"Content-Type": "application/json"}))
    assert _field_matches(err["field"], f"template.items.0.{field}"), err
    _nothing_written(sessions)


@pytest.mark.parametrize(("name", "item", "field", "custom_id"), CASES, ids=IDS)
def test_schedule_patch(http: httpx.Client, sessions: sessionmaker[Session], name: str, item: str, field: str,
                        custom_id: str | None) -> None:
    good = {"name": "nightly", "cron": "0 2 * * *", "template": {"items": [json.loads(GOOD)]}}
    created = http.post("/v1/schedules", json=good)
    assert created.status_code == 201
    body = '{"template": {"items": [%s]}}' % item
    err = _problem(http.patch(f"/v1/schedules/{created.json()['id']}", content=body,
                              headers={"Content-Type": "application/json"}))
    assert _field_matches(err["field"], f"template.items.0.{field}"), err
    with sessions() as s:
        assert s.scalars(sa.select(Schedule)).one().template == good["template"]


@pytest.mark.parametrize("value", ["a%00b", "%ED%A0%80"])
def test_query_options_of_a_jsonl_batch(http: httpx.Client, sessions: sessionmaker[Session], value: str) -> None:
    resp = http.post(f"/v1/batches?name={value}", content=GOOD + "\n", headers={"Content-Type": "application/x-ndjson"})
    if value == "a%00b":
        err = _problem(resp)
        assert err["field"] == "query.name" and "NUL" in err["message"]
    else:  # invalid UTF-8 in a query never becomes a lone surrogate
        assert resp.status_code == 201 and not any(0xD800 <= ord(c) <= 0xDFFF for c in resp.json()["name"])


@pytest.mark.parametrize("where", ["metadata", "name"])
def test_batch_level_fields(http: httpx.Client, sessions: sessionmaker[Session], where: str) -> None:
    hostile = '{"k": %s}' % DEEP if where == "metadata" else '"x\\u0000"'
    body = '{"%s": %s, "items": [%s]}' % (where, hostile, GOOD)
    err = _problem(http.post("/v1/batches", content=body, headers={"Content-Type": "application/json"}))
    assert err["position"] is None and _field_matches(err["field"], where), err
    _nothing_written(sessions)


def test_provider_callback_with_hostile_json_is_stored_not_a_5xx(http: httpx.Client, settings: Settings,
                                                                 sessions: sessionmaker[Session]) -> None:
    created = http.post("/v1/batches", json={"items": [{"model": "runware:100@1", "prompt": "a red fox"}]})
    assert created.status_code == 201
    with sessions() as s:
        job = s.scalars(sa.select(Job)).one()
        job_id, token = job.id, attempt_token(settings.resolved_secret_key(), job.id, 1)
    for body in (DEEP, '{"data": [{"taskUUID": "\\u0000", "n": %s}]}' % BIG, '"\\ud800"'):
        resp = http.post(f"/webhooks/runware/{job_id}/1", params={"token": token}, content=body,
                         headers={"Content-Type": "application/json"})
        assert resp.status_code < 500, resp.text[:300]
    with sessions() as s:
        # Each reached the inbox (authenticated by the attempt's token) and was refused there:
        # none names the attempt's taskUUID in a form we can read.
        rows = s.scalars(sa.select(Delivery).where(Delivery.job_id == job_id)).all()
        assert len(rows) == 3 and all(r.rejection and r.attempt == 1 for r in rows)


HOSTILE_BODIES = {"nul": '{"name": "a\\u0000b"}', "surrogate": '{"name": "\\ud800"}',
                  "deep": '{"name": %s}' % DEEP, "huge-integer": '{"name": %s}' % BIG, "nan": '{"name": NaN}'}


@pytest.mark.parametrize("hostile", list(HOSTILE_BODIES))
def test_every_json_body_operation_refuses_hostile_json(http: httpx.Client, sessions: sessionmaker[Session],
                                                        hostile: str) -> None:
    """Every operation of the document that takes a JSON body, including ones added later."""
    from tests.conftest import make_key

    doc = http.get("/v1/openapi.json").json()
    batch = http.post("/v1/batches", content='{"items": [%s]}' % GOOD, headers={"Content-Type": "application/json"})
    sched = http.post("/v1/schedules", json={"name": "s", "cron": "0 2 * * *",
                                             "template": {"items": [json.loads(GOOD)]}})
    with sessions() as s:
        job_id = str(s.scalars(sa.select(Job.id)).first())
    ids = {"batch_id": batch.json()["id"], "schedule_id": sched.json()["id"], "job_id": job_id}
    admin = {"Authorization": f"Bearer {make_key(sessions, 'acme', role='admin')}"}
    tried = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if "application/json" not in op.get("requestBody", {}).get("content", {}):
                continue
            url = path.format(**ids)
            headers = {"Content-Type": "application/json", **(admin if "403" in op["responses"] else {})}
            resp = http.request(method.upper(), url, content=HOSTILE_BODIES[hostile], headers=headers)
            assert resp.status_code in (400, 422), (method, path, resp.status_code, resp.text[:300])
            assert resp.headers["content-type"].startswith("application/problem+json")
            tried += 1
    assert tried >= 5


@pytest.mark.parametrize(("raw", "path"), [
    (b'{"items": [{"prompt": "\xed\xa0\x80"}]}', ("items", 0, "prompt")),  # a surrogate as raw UTF-8 bytes
    ('{"a": ["x", "\\u0000"]}'.encode("utf-16"), ("a", 1)),  # UTF-16 text, its NUL as an escape
    (b'{"a": {"b\\uDFFF": 1}}', ("a", "b\udfff")),  # a key, upper-case hex
    (b'{"a": [1, 2, NaN]}', ("a", 2)),
])
def test_loads_finds_what_the_quick_scan_must_not_miss(raw: bytes, path: tuple[Any, ...]) -> None:
    with pytest.raises(jsonbody.BodyProblem) as caught:
        jsonbody.loads(raw)
    assert caught.value.path == path


def test_loads_lets_valid_text_through() -> None:
    text = '{"p": "caf\\u00e9 \\ud83e\\udd8a \\\\u0000", "n": [[[1.5, -2, true, null]]]}'
    assert jsonbody.loads(text.encode()) == {"p": "café 🦊 \\u0000", "n": [[[1.5, -2, True, None]]]}
    assert jsonbody.loads(text.encode("utf-16")) == jsonbody.loads(text) == json.loads(text)
