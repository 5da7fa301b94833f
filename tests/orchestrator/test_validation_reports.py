"""A rejected batch or schedule lists every problem at once, titled for its endpoint, with hints that help."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.orchestrator.api.test_api_intake import count_rows, post

SCHEDULE = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
            "template": {"items": [{"model": "flux-schnell", "prompt": "a mug"}]}}


def problems(resp: Any) -> set[tuple[Any, str]]:
    return {(e["position"], e["field"]) for e in resp.json["errors"]}


def test_duplicate_custom_id_is_reported_with_the_other_problems(client: FlaskClient, headers: dict[str, str],
                                                                 session: Session) -> None:
    items = [{"custom_id": "a", "model": "flux-schnell", "prompt": "a fox"},
             {"custom_id": "a", "model": "flux-schnell", "prompt": "an owl"},          # duplicate
             {"custom_id": "c", "model": "flux-schnell", "prompt": "x", "steps": "many"},  # structural (type)
             {"custom_id": "d", "model": "flux-schnel", "prompt": "a cat"}]              # unknown model
    resp = post(client, headers, {"items": items})
    assert resp.status_code == 422 and resp.json["title"] == "The batch has invalid items"
    assert problems(resp) == {(1, "custom_id"), (2, "steps"), (3, "model")}
    assert count_rows(session) == (0, 0)
    # Without the structural error the same duplicate and model problems still come together.
    resp = post(client, headers, {"items": [items[0], items[1], items[3]]})
    assert problems(resp) == {(1, "custom_id"), (2, "model")}


def test_unknown_models_suggest_and_the_list_comes_once(client: FlaskClient, headers: dict[str, str]) -> None:
    items = [{"custom_id": f"i{i}", "model": "flux-schnel", "prompt": "a fox"} for i in range(3)]
    resp = post(client, headers, {"items": items})
    messages = [e["message"] for e in resp.json["errors"]]
    assert messages == ["unknown model 'flux-schnel'; did you mean flux-schnell, fal-ai/flux/schnell or flux-dev?"] * 3
    assert resp.json["detail"].count("runware:101@1") == 1  # the whole list once, in the detail


def test_catalog_column_mismatch_is_said_once_with_the_columns(client: FlaskClient, headers: dict[str, str]) -> None:
    rows = [{"sku": "A1", "color": "red", "product": "mug"}, {"sku": "A1", "color": "blue", "product": "pot"},
            {"sku": "C3", "color": "", "product": "lamp"}]
    catalog = {"model": "flux-schnell", "template": "Photo of a {colour} {product}", "rows": rows}
    resp = post(client, headers, {"catalog": catalog})
    assert resp.status_code == 422
    assert [e for e in resp.json["errors"]] == [{
        "position": None, "custom_id": None, "field": "catalog.template",
        "message": "no row has a value for colour; the rows have color, product, sku"}]
    # A wrong id field: once, naming the columns; a row missing a used field and a duplicate id both listed.
    resp = post(client, headers, {"catalog": {**catalog, "template": "Photo of a {color} {product}",
                                              "id_field": "SKU"}})
    assert [(e["field"], e["message"]) for e in resp.json["errors"] if e["position"] is None] == [
        ("catalog.id_field", "no row has a field 'SKU'; the rows have color, product, sku")]
    resp = post(client, headers, {"catalog": {**catalog, "template": "Photo of a {color} {product}",
                                              "id_field": "sku"}})
    assert problems(resp) == {(1, "custom_id"), (2, "template")}


def test_schedule_reports_fields_and_template_together(client: FlaskClient, headers: dict[str, str]) -> None:
    bad = {**SCHEDULE, "timezone": "Mars/Olympus", "cron": "at two",
           "template": {"items": [{"model": "flux-schnel", "prompt": "a mug"}, {"model": "flux-dev", "prompt": ""}]}}
    resp = client.post("/v1/schedules", json=bad, headers=headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert resp.json["title"] == "The schedule is invalid"
    assert resp.json["type"].endswith("/invalid-schedule") and "nothing was saved" in resp.json["detail"]
    assert problems(resp) == {(None, "timezone"), (None, "cron"), (0, "template.model"), (1, "template.prompt")}
    assert client.get("/v1/schedules", headers=headers).json["data"] == []
    # PATCH, and a body that is not an object, are titled for a schedule too.
    sid = client.post("/v1/schedules", json=SCHEDULE, headers=headers).json["id"]
    patched = client.patch(f"/v1/schedules/{sid}", json={"timezone": "Nowhere/Land", "template": bad["template"]},
                           headers=headers)
    assert patched.status_code == 422 and patched.json["title"] == "The schedule is invalid"
    assert problems(patched) == {(None, "timezone"), (0, "template.model"), (1, "template.prompt")}
    listed = client.post("/v1/schedules", json=[1], headers=headers)
    assert listed.status_code == 422 and listed.json["title"] == "The schedule is invalid"
