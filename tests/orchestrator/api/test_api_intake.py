"""POST /v1/batches in all its forms, and every kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.models import Batch, Job
from tests.conftest import make_key

ITEM = {"custom_id": "a", "model": "fal-ai/flux/schnell", "prompt": "a red fox"}


def post(client: FlaskClient, headers: dict[str, str], body: Any, **kw: Any) -> Any:
    return client.post("/v1/batches", json=body, headers=headers, **kw)


def count_rows(session: Session) -> tuple[int, int]:
    return (session.scalar(sa.select(sa.func.count()).select_from(Batch)) or 0,
            session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0)


def test_explicit_items(client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    body = {"name": "board", "items": [ITEM, {**ITEM, "custom_id": "b", "model": "runware:100@1",
                                              "width": 512, "height": 512, "num_images": 2}]}
    resp = post(client, headers, body)
    assert resp.status_code == 201, resp.json
    assert resp.json["total"] == 2 and resp.json["counts"]["queued"] == 2 and resp.json["state"] == "queued"
    jobs = client.get(f"/v1/batches/{resp.json['id']}/jobs", headers=headers).json["data"]
    assert [j["custom_id"] for j in jobs] == ["a", "b"]
    assert jobs[0]["params"] == {"prompt": "a red fox", "width": 1024, "height": 768, "steps": 4,
                                 "guidance": 3.5, "num_images": 1, "output_format": "jpeg"}
    assert jobs[1]["provider"] == "runware" and jobs[1]["params"]["num_images"] == 2


def test_alias_routes_to_primary_provider(client: FlaskClient, headers: dict[str, str]) -> None:
    resp = post(client, headers, {"items": [{**ITEM, "model": "juggernaut-flux"}]})
    job = client.get(f"/v1/batches/{resp.json['id']}/jobs", headers=headers).json["data"][0]
    assert job["requested_model"] == "juggernaut-flux"
    assert job["model"] == "rundiffusion-fal/juggernaut-flux/lightning" and job["params"]["output_format"] == "png"


def test_matrix(client: FlaskClient, headers: dict[str, str]) -> None:
    body = {"lane": "bulk", "matrix": {"model": "flux-schnell", "prompts": ["cat", "dog", "owl"],
                                       "seeds": [1, 2], "sizes": ["square", {"width": 768, "height": 512}],
                                       "styles": ["watercolor", "neon"]}}
    resp = post(client, headers, body)
    assert resp.status_code == 201, resp.json
    assert resp.json["total"] == 3 * 2 * 2 * 2 and resp.json["lane"] == "bulk"
    jobs = client.get(f"/v1/batches/{resp.json['id']}/jobs?limit=500", headers=headers).json["data"]
    assert jobs[0]["params"]["prompt"] == "cat, watercolor" and jobs[0]["params"]["seed"] == 1
    assert {(j["params"]["width"], j["params"]["height"]) for j in jobs} == {(512, 512), (768, 512)}
    assert len({j["custom_id"] for j in jobs}) == 24


def test_matrix_variants_draw_stored_seeds(client: FlaskClient, headers: dict[str, str]) -> None:
    resp = post(client, headers, {"matrix": {"model": "flux-dev", "prompts": ["x"], "variants": 4}})
    jobs = client.get(f"/v1/batches/{resp.json['id']}/jobs", headers=headers).json["data"]
    assert len(jobs) == 4 and all(isinstance(j["params"]["seed"], int) for j in jobs)


def test_catalog(client: FlaskClient, headers: dict[str, str]) -> None:
    body = {"catalog": {"model": "runware:101@1", "template": "Studio photo of a {color} {product}",
                        "id_field": "sku", "rows": [{"sku": "A1", "color": "red", "product": "mug"},
                                                    {"sku": "B2", "color": "blue", "product": "lamp"}]}}
    resp = post(client, headers, body)
    assert resp.status_code == 201, resp.json
    jobs = client.get(f"/v1/batches/{resp.json['id']}/jobs", headers=headers).json["data"]
    assert [(j["custom_id"], j["params"]["prompt"]) for j in jobs] == [
        ("A1", "Studio photo of a red mug"), ("B2", "Studio photo of a blue lamp")]


def test_jsonl_body(client: FlaskClient, headers: dict[str, str]) -> None:
    lines = "\n".join(json.dumps({"custom_id": f"j{i}", "prompt": f"p{i}"}) for i in range(3))
    resp = client.post("/v1/batches?model=flux-schnell&name=nightly&lane=bulk", data=lines + "\n\n",
                       headers={**headers, "Content-Type": "application/x-ndjson"})
    assert resp.status_code == 201, resp.json
    assert resp.json["total"] == 3 and resp.json["name"] == "nightly" and resp.json["lane"] == "bulk"


def test_invalid_items_listed_by_position_and_nothing_written(
        client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    body = {"items": [ITEM,
                      {"custom_id": "w", "model": "runware:100@1", "prompt": "ok", "width": 500, "height": 512},
                      {"custom_id": "s", "model": "fal-ai/flux/schnell", "prompt": "ok", "steps": 40},
                      {"custom_id": "m", "model": "no-such-model", "prompt": "ok"},
                      {"custom_id": "t", "model": "fal-ai/flux/dev", "prompt": "ok", "colour": "red"},
                      {"custom_id": "n", "model": "fal-ai/flux/dev"}]}
    resp = post(client, headers, body)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    by_field = {(e["position"], e["custom_id"], e["field"]): e["message"] for e in resp.json["errors"]}
    # One answer lists every problem: structural ones and those against each item's model.
    assert set(by_field) == {(1, "w", "width"), (2, "s", "steps"), (3, "m", "model"), (4, "t", "colour"),
                             (5, "n", "prompt")}
    assert [e["position"] for e in resp.json["errors"]] == [1, 2, 3, 4, 5]
    assert count_rows(session) == (0, 0)
    del body["items"][4:]
    resp = post(client, headers, body)
    assert resp.status_code == 422
    by_field = {(e["position"], e["custom_id"], e["field"]): e["message"] for e in resp.json["errors"]}
    assert set(by_field) == {(1, "w", "width"), (2, "s", "steps"), (3, "m", "model")}
    assert "multiple of 64" in by_field[(1, "w", "width")]
    assert "between 1 and 12" in by_field[(2, "s", "steps")]
    assert count_rows(session) == (0, 0)


def test_duplicate_custom_ids_rejected(client: FlaskClient, headers: dict[str, str]) -> None:
    resp = post(client, headers, {"items": [ITEM, {**ITEM, "prompt": "other"}]})
    assert resp.status_code == 422
    assert resp.json["errors"] == [{"position": 1, "custom_id": "a", "field": "custom_id",
                                    "message": "duplicate of the item at position 0"}]


@pytest.mark.parametrize(("item", "field"), [
    ({"negative_prompt": "blurry"}, "negative_prompt"),  # fal FLUX has no negative prompt
    ({"native": {"sync_mode": True}}, "native.sync_mode"),
    ({"native": {"bogus": 1}}, "native.bogus"),
    ({"loras": [{"path": "x"}]}, "loras"),  # schnell takes no LoRAs
    ({"output_format": "webp"}, "output_format"),
    ({"image_size": "huge"}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"num_images": 9}, "num_images"),
    ({"width": 512}, "height"),
])
def test_model_rules(client: FlaskClient, headers: dict[str, str], item: dict[str, Any], field: str) -> None:
    resp = post(client, headers, {"items": [{**ITEM, **item}]})
    assert resp.status_code == 422, resp.json
    assert [e["field"] for e in resp.json["errors"]] == [field]


@pytest.mark.parametrize(("body", "content_type"), [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"\xff\xfe", "application/json"),
    (b'{"items": []}', "application/json"),
    (b'{"items": [1]}', "application/json"),
    (b'{"items": [{"prompt": null}]}', "application/json"),
    (b'{"matrix": {"prompts": []}}', "application/json"),
    (b'{"items": [], "matrix": {"prompts": ["a"]}}', "application/json"),
    (b'{"catalog": {"template": "{a}", "rows": [{"b": 1}], "model": "flux-dev"}}', "application/json"),
    (b'{"catalog": {"template": "{0}", "rows": [{"b": 1}], "model": "flux-dev"}}', "application/json"),
    (b'{"items": [{"prompt": "x", "model": "flux-dev", "seed": 1e400}]}', "application/json"),
    (b'{"callback_url": "ftp://x", "items": [{"prompt": "x", "model": "flux-dev"}]}', "application/json"),
    (b"{}\n{oops", "application/x-ndjson"),
    (b"", "application/x-ndjson"),
    (b"\n\n", "application/x-ndjson"),
    (b"prompt", "text/plain"),
])
def test_garbage_never_5xx(client: FlaskClient, headers: dict[str, str], session: Session, body: bytes,
                           content_type: str) -> None:
    resp = client.post("/v1/batches", data=body, headers={**headers, "Content-Type": content_type})
    assert 400 <= resp.status_code < 500, resp.json
    assert resp.mimetype == "application/problem+json" and resp.json["detail"]
    assert count_rows(session) == (0, 0)


def test_item_limit(app: Any, client: FlaskClient, headers: dict[str, str]) -> None:
    app.extensions["orchestrator"].settings.max_items_per_batch = 3
    resp = post(client, headers, {"items": [{**ITEM, "custom_id": str(i)} for i in range(4)]})
    assert resp.status_code == 413 and "at most 3" in resp.json["detail"]
    resp = post(client, headers, {"matrix": {"model": "flux-dev", "prompts": ["a", "b"], "seeds": [1, 2]}})
    assert resp.status_code == 413 and "expands to 4" in resp.json["detail"]


def test_body_size_limit(app: Any, client: FlaskClient, headers: dict[str, str]) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 2000
    resp = post(client, headers, {"items": [{**ITEM, "custom_id": str(i)} for i in range(100)]})
    assert resp.status_code == 413 and resp.mimetype == "application/problem+json"


def test_idempotency_key(client: FlaskClient, headers: dict[str, str], session: Session) -> None:
    h = {**headers, "Idempotency-Key": "nightly-2026-11-21"}
    first = post(client, h, {"items": [ITEM]})
    again = post(client, h, {"items": [ITEM]})
    assert first.status_code == 201 and again.status_code == 200 and again.json["id"] == first.json["id"]
    other = post(client, h, {"items": [{**ITEM, "prompt": "different"}]})
    assert other.status_code == 409 and other.mimetype == "application/problem+json"
    assert count_rows(session) == (1, 1)


def test_auth_and_tenant_isolation(client: FlaskClient, headers: dict[str, str],
                                   sessions: sessionmaker[Session]) -> None:
    assert post(client, {}, {"items": [ITEM]}).status_code == 401
    assert post(client, {"Authorization": "Bearer orch_nope_x"}, {"items": [ITEM]}).status_code == 401
    batch_id = post(client, headers, {"items": [ITEM]}).json["id"]
    other = {"Authorization": f"Bearer {make_key(sessions, 'globex')}"}
    assert client.get(f"/v1/batches/{batch_id}", headers=other).status_code == 404
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=other).status_code == 404
    assert client.get("/v1/batches", headers=other).json["data"] == []
    job_id = client.get(f"/v1/batches/{batch_id}/jobs", headers=headers).json["data"][0]["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    assert client.get("/v1/batches/not-a-uuid", headers=headers).status_code == 404
