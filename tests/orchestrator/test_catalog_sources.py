"""Catalog sources, key patterns and only_changed, in-process on real Postgres and loopback HTTP.

The end-to-end nights with real workers and both sandboxes are in test_e2e_catalog.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import catalog_keys, catalog_source, schedules
from orchestrator.catalog_source import SourceError, SourcePolicy
from orchestrator.db import session_scope, utcnow
from orchestrator.models import Batch, Job
from orchestrator.schedule_models import CatalogEntry, Schedule, ScheduleRun
from orchestrator.schemas import ScheduleIn
from orchestrator.storage.local import LocalStorage
from tests.http_helpers import LoopbackServer

CATALOG = {"model": "flux-schnell", "template": "Photo of a {colour} {product}", "id_field": "sku",
           "source": "storage:catalog/products.csv", "key_pattern": "catalog/{sku}/{n}.{ext}"}
BODY = {"name": "nightly", "cron": "0 2 * * *", "template": {"catalog": CATALOG}}
CSV = "sku,product,colour\nA1,mug,red\nB2,lamp,blue\n"


class SourceServer(LoopbackServer):
    """A loopback HTTP server serving one body; counts GETs and can stall each answer."""

    def __init__(self, body: bytes, content_type: str = "text/csv", delay: float = 0.0) -> None:
        super().__init__(body=body, headers={"Content-Type": content_type}, delay=delay, path="/feeds/products.csv")

    @property
    def gets(self) -> int:
        return len(self.calls)


@pytest.fixture
def source_server() -> Iterator[SourceServer]:
    server = SourceServer(CSV.encode(), delay=0.5)
    yield server
    server.close()


@pytest.mark.parametrize(("pattern", "message"), [
    ("{sku}/{n}.{ext}", "must start with a literal folder"),
    ("catalog/{sku} {n}.{ext}", "not allowed in an object key"),
    ("catalog/../{sku}.{ext}", "dot-leading path segment"),
    ("catalog/{sku}.jpg", "must end with .{ext}"),
    ("catalog/{sku!r}.{ext}", "plain column name"),
    ("catalog/{sku}", "must end with .{ext}"),
])
def test_invalid_key_patterns_name_the_field(client: FlaskClient, headers: dict[str, str], pattern: str,
                                             message: str) -> None:
    body = {**BODY, "template": {"catalog": {**CATALOG, "key_pattern": pattern}}}
    resp = client.post("/v1/schedules", json=body, headers=headers)
    assert resp.status_code == 422, resp.json
    errors = {e["field"]: e["message"] for e in resp.json["errors"]}
    assert message in errors["template.catalog.key_pattern"], errors
    assert client.get("/v1/schedules", headers=headers).json["data"] == []


@pytest.mark.parametrize(("rows", "extra", "message", "position"), [
    ([{"sku": "A1", "product": "mug", "colour": "red"}], {"key_pattern": "catalog/{size}/{n}.{ext}"},
     "{size} is not a column", None),
    ([{"sku": "A1", "product": "mug", "colour": "red"}, {"sku": "B2", "product": "mug", "colour": "red"}],
     {"key_pattern": "catalog/{product}.{ext}"}, "same key as row 0", 1),
    ([{"sku": "a/b", "product": "mug", "colour": "red"}], {}, "not safe in an object key", 0),
    ([{"sku": "A1", "product": "mug", "colour": "red"}], {"key_pattern": "catalog/{sku}.{ext}", "num_images": 2},
     "must contain {n}", None),
])
def test_key_patterns_are_checked_against_inline_rows(client: FlaskClient, headers: dict[str, str],
                                                     rows: list[dict[str, str]], extra: dict[str, Any], message: str,
                                                     position: int | None) -> None:
    catalog = {**{k: v for k, v in CATALOG.items() if k != "source"}, "rows": rows, "model": "runware:100@1", **extra}
    resp = client.post("/v1/schedules", json={**BODY, "template": {"catalog": catalog}}, headers=headers)
    assert resp.status_code == 422, resp.json
    [error] = [e for e in resp.json["errors"] if e["field"] == "template.catalog.key_pattern"]
    assert message in error["message"] and error["position"] == position
    # The same rules hold for a batch submitted by hand.
    direct = client.post("/v1/batches", json={"catalog": catalog}, headers=headers)
    assert direct.status_code == 422 and "catalog.key_pattern" in [e["field"] for e in direct.json["errors"]]


@pytest.mark.parametrize(("source", "field", "message"), [
    ("ftp://example.com/products.csv", "template.catalog.source", "storage:<key> or an https:// URL"),
    ("http://example.com/products.csv", "template.catalog.source", "storage:<key> or an https:// URL"),
    ("storage:../products.csv", "template.catalog.source", "storage key is not valid"),
    ("https://example.com/products", "template.catalog.source_format", "cannot tell the format"),
    ("https://127.0.0.1/products.csv", "template.catalog.source", "127.0.0.1 is not a public address"),
    ("https://10.1.2.3/products.csv", "template.catalog.source", "not a public address"),
    ("https://[::ffff:169.254.169.254]/products.csv", "template.catalog.source", "not a public address"),
    ("https://user:pw@example.com/products.csv", "template.catalog.source", "credentials"),
])
def test_invalid_sources_are_refused_at_save_time(client: FlaskClient, headers: dict[str, str], source: str,
                                                  field: str, message: str) -> None:
    body = {**BODY, "template": {"catalog": {**CATALOG, "source": source}}}
    resp = client.post("/v1/schedules", json=body, headers=headers)
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json", resp.json
    errors = {e["field"]: e["message"] for e in resp.json["errors"]}
    assert message in errors[field], errors
    assert "pw" not in resp.text


def test_rows_and_source_are_exclusive_and_batches_take_rows_inline(client: FlaskClient,
                                                                    headers: dict[str, str]) -> None:
    both = {**CATALOG, "rows": [{"sku": "A1", "product": "mug", "colour": "red"}]}
    resp = client.post("/v1/schedules", json={**BODY, "template": {"catalog": both}}, headers=headers)
    assert resp.status_code == 422 and "rows or source" in resp.text
    direct = client.post("/v1/batches", json={"catalog": CATALOG}, headers=headers)
    assert direct.status_code == 422
    assert [e["field"] for e in direct.json["errors"]] == ["catalog.source"]


def test_a_valid_source_schedule_defaults_to_bulk_and_only_changed(client: FlaskClient,
                                                                   headers: dict[str, str]) -> None:
    resp = client.post("/v1/schedules", json=BODY, headers=headers)
    assert resp.status_code == 201, resp.json
    assert schedules.effective_template(resp.json["template"])["lane"] == "bulk"
    assert schedules.effective_template(resp.json["template"])["catalog"]["only_changed"] is True
    run = client.post(f"/v1/schedules/{resp.json['id']}/run", headers=headers)
    assert run.status_code == 202  # a worker reads the source, never the API request
    shown = client.get(f"/v1/schedules/{resp.json['id']}", headers=headers).json
    assert shown["last_runs"] == [] and shown["last_error"] is None


def test_private_addresses_are_refused_at_fetch_time_unless_allowed(source_server: SourceServer) -> None:
    strict = SourcePolicy()
    # A public-looking name that resolves to loopback (DNS rebinding) is refused by its address.
    named = catalog_source.parse("https://catalog.example.com/feeds/products.csv", None, strict)
    with httpx.Client() as http, pytest.raises(SourceError, match=r"127\.0\.0\.1 is not a public address"):
        catalog_source.read_rows(named, "acme", None, http, strict,  # type: ignore[arg-type]
                                 resolver=lambda host, port: ["127.0.0.1"])
    with pytest.raises(SourceError, match="https://"):
        catalog_source.parse(source_server.url, None, strict)
    assert source_server.gets == 0
    allowed = SourcePolicy(allow_private=True)
    src = catalog_source.parse(source_server.url, None, allowed)
    with httpx.Client() as http:
        rows = catalog_source.read_rows(src, "acme", None, http, allowed)  # type: ignore[arg-type]
    assert rows == [{"sku": "A1", "product": "mug", "colour": "red"},
                    {"sku": "B2", "product": "lamp", "colour": "blue"}]


@pytest.mark.parametrize(("body", "content_type", "policy", "message"), [
    (b"<html>login</html>", "text/html", SourcePolicy(allow_private=True), "content type text/html is not CSV"),
    (CSV.encode() * 200, "text/csv", SourcePolicy(allow_private=True, max_bytes=1024), "larger than 1024 bytes"),
    (b"sku,product\nA1,mug,extra\n", "text/csv", SourcePolicy(allow_private=True), "more fields than the header"),
    (b"sku\n", "text/csv", SourcePolicy(allow_private=True), "no rows"),
])
def test_bad_sources_say_why(body: bytes, content_type: str, policy: SourcePolicy, message: str) -> None:
    server = SourceServer(body, content_type)
    try:
        src = catalog_source.parse(server.url, None, policy)
        with httpx.Client() as http, pytest.raises(SourceError, match=message):
            catalog_source.read_rows(src, "acme", None, http, policy)  # type: ignore[arg-type]
    finally:
        server.close()


def test_jsonl_rows_and_their_errors() -> None:
    rows = catalog_source.parse_rows(b'{"sku": "A1", "n": 2}\n\n{"sku": "B2", "n": 3}\n', "jsonl", None, 10)
    assert rows == [{"sku": "A1", "n": 2}, {"sku": "B2", "n": 3}]
    with pytest.raises(SourceError, match="line 2 must be an object of plain values"):
        catalog_source.parse_rows(b'{"sku": "A1"}\n{"sku": {"x": 1}}\n', "jsonl", None, 10)
    with pytest.raises(SourceError, match="at most 1 per batch"):
        catalog_source.parse_rows(b'{"a": 1}\n{"a": 2}\n', "jsonl", None, 1)


def test_content_keys_cover_every_generation_parameter() -> None:
    base = {"prompt": "a mug", "width": 512, "height": 512, "steps": 4, "seed": 1, "num_images": 1,
            "output_format": "jpeg"}
    key = catalog_keys.content_key("flux-schnell", base)
    assert key == catalog_keys.content_key("flux-schnell", dict(reversed(list(base.items()))))
    for change in ({"seed": 2}, {"width": 768}, {"prompt": "a cup"}, {"loras": [{"path": "x", "scale": 1.0}]},
                   {"steps": 5}, {"output_format": "png"}):
        assert catalog_keys.content_key("flux-schnell", {**base, **change}) != key
    assert catalog_keys.content_key("flux-dev", base) != key


def _source_schedule(sessions: sessionmaker[Session], source: str) -> str:
    with session_scope(sessions) as s:
        data = ScheduleIn.model_validate(
            {**BODY, "template": {"catalog": {**CATALOG, "source": source}}})
        schedule = schedules.create(s, "acme", data, 1000, SourcePolicy(allow_private=True))
        schedule.next_run_at = utcnow() - timedelta(seconds=1)
        return str(schedule.id)


@pytest.mark.committed
def test_two_schedulers_racing_fire_once_and_read_the_source_once(
        sessions: sessionmaker[Session], tmp_path: Path, source_server: SourceServer) -> None:
    sid = _source_schedule(sessions, source_server.url)
    storage = LocalStorage(tmp_path / "storage", secret_key="k" * 20, public_url="http://127.0.0.1:9")
    created: list[list[Any]] = []
    start = threading.Barrier(2)

    def scheduler() -> None:
        with httpx.Client() as http, session_scope(sessions) as s:
            env = schedules.SlotEnv(storage=storage, http=http, policy=SourcePolicy(allow_private=True))
            start.wait()
            created.append(schedules.fire_due(s, utcnow(), 1000, env))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(len(c) for c in created) == [0, 1]
    assert source_server.gets == 1
    with session_scope(sessions) as s:
        batch = s.scalars(sa.select(Batch)).one()
        assert batch.lane == "bulk" and batch.total == 2 and str(batch.schedule_id) == sid
        assert batch.catalog_summary is not None
        assert {k: batch.catalog_summary[k] for k in ("read", "new", "changed", "unchanged", "removed")} == {
            "read": 2, "new": 2, "changed": 0, "unchanged": 0, "removed": 0}
        refs = [j.catalog_ref for j in s.scalars(sa.select(Job).order_by(Job.position))]
        assert refs[0] is not None and refs[0]["keys"] == ["acme/catalog/A1/0.jpg"]
        assert s.scalar(sa.select(sa.func.count()).select_from(ScheduleRun)) == 1


def test_an_unreadable_source_fails_the_slot_visibly_and_the_next_slot_tries_again(
        sessions: sessionmaker[Session], tmp_path: Path, client: FlaskClient, headers: dict[str, str]) -> None:
    sid = _source_schedule(sessions, "storage:catalog/products.csv")
    storage = LocalStorage(tmp_path / "storage", secret_key="k" * 20, public_url="http://127.0.0.1:9")
    env = schedules.SlotEnv(storage=storage)
    with session_scope(sessions) as s:
        assert schedules.fire_due(s, utcnow(), 1000, env) == []
    shown = client.get(f"/v1/schedules/{sid}", headers=headers).json
    assert shown["enabled"] is True and "storage:catalog/products.csv does not exist" in shown["last_error"]
    [run] = shown["last_runs"]
    assert run["status"] == "failed" and run["batch_id"] is None and "does not exist" in run["error"]
    # Invalid rows fail the slot too, naming the row and the field, and write nothing.
    storage.write("acme/catalog/products.csv", [b"sku,product,colour\nA1,mug,\nB2,lamp,blue\n"])
    with session_scope(sessions) as s:
        s.get(Schedule, uuid.UUID(sid)).next_run_at = utcnow()  # type: ignore[union-attr]
    with session_scope(sessions) as s:
        assert schedules.fire_due(s, utcnow(), 1000, env) == []
    shown = client.get(f"/v1/schedules/{sid}", headers=headers).json
    assert "row 0 (A1): template: row has no value for colour" in shown["last_error"]
    with session_scope(sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Batch)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(CatalogEntry)) == 0
    # Once the source is fixed, the next slot creates its batch and clears the error.
    storage.write("acme/catalog/products.csv", [CSV.encode()])
    with session_scope(sessions) as s:
        s.get(Schedule, uuid.UUID(sid)).next_run_at = utcnow()  # type: ignore[union-attr]
    with session_scope(sessions) as s:
        assert len(schedules.fire_due(s, utcnow(), 1000, env)) == 1
    shown = client.get(f"/v1/schedules/{sid}", headers=headers).json
    assert shown["last_error"] is None and [r["status"] for r in shown["last_runs"]] == ["created", "failed", "failed"]
    metrics = client.get("/metrics").text
    assert 'orchestrator_schedule_runs_total{outcome="failed"} 2' in metrics
    assert 'orchestrator_schedule_last_run_rows{tenant="acme",schedule="nightly",outcome="new"} 2' in metrics


def test_unchanged_rows_reuse_stored_images_only_while_the_objects_exist(
        client: FlaskClient, headers: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path) -> None:
    rows = [{"sku": "A1", "product": "mug", "colour": "red"}, {"sku": "B2", "product": "lamp", "colour": "blue"}]
    catalog = {"model": "flux-schnell", "template": "Photo of a {colour} {product}", "id_field": "sku",
               "rows": rows, "name": "products", "only_changed": True}
    first = client.post("/v1/batches", json={"catalog": catalog}, headers=headers).json
    assert first["catalog"]["new"] == 2
    # Pretend the store step finished both rows: index entries pointing at real objects.
    storage = LocalStorage(tmp_path / "storage", secret_key="x" * 20, public_url="http://127.0.0.1:9")
    with session_scope(sessions) as s:
        jobs = s.scalars(sa.select(Job).order_by(Job.position)).all()
        for job in jobs:
            key = f"acme/old/{job.custom_id}.jpg"
            storage.write(key, [b"jpeg bytes"])
            assert job.catalog_ref is not None
            s.add(CatalogEntry(tenant="acme", catalog="products", row_id=job.custom_id,
                               content_key=job.catalog_ref["content_key"], job_id=job.id,
                               images=[{"index": 0, "storage_key": key, "sha256": "0" * 64}]))
    storage.delete("acme/old/B2.jpg")  # removed behind our back: must be generated again
    second = client.post("/v1/batches", json={"catalog": catalog}, headers=headers).json
    assert {k: second["catalog"][k] for k in ("new", "changed", "unchanged", "removed")} == {
        "new": 0, "changed": 1, "unchanged": 1, "removed": 0}
    assert second["counts"]["succeeded"] == 1 and second["counts"]["queued"] == 1
    manifest = [json.loads(x) for x in client.get(f"/v1/batches/{second['id']}/results",
                                                                headers=headers).text.splitlines()]
    assert manifest[0]["status"] == "succeeded" and manifest[0]["images"][0]["storage_key"] == "acme/old/A1.jpg"
    timeline = client.get(f"/v1/jobs/{manifest[0]['job_id']}", headers=headers).json["events"]
    assert [(e["kind"], e["to"]) for e in timeline] == [("unchanged", "succeeded")]
    assert manifest[1]["status"] == "queued"
    # Everything unchanged: the batch is done at once, nothing to send.
    storage.write("acme/old/B2.jpg", [b"jpeg bytes"])
    third = client.post("/v1/batches", json={"catalog": {**catalog, "rows": rows[:1]}}, headers=headers).json
    assert third["state"] == "succeeded" and third["catalog"]["unchanged"] == 1 and third["catalog"]["removed"] == 1


def test_prune_deletes_only_images_no_remaining_row_uses(
        client: FlaskClient, headers: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage", secret_key="x" * 20, public_url="http://127.0.0.1:9")
    rows = [{"sku": "A1", "product": "mug", "colour": "red"}, {"sku": "B2", "product": "lamp", "colour": "blue"},
            {"sku": "C3", "product": "vase", "colour": "red"}]
    catalog = {"model": "flux-schnell", "template": "Photo of a {colour} {product}", "id_field": "sku",
               "rows": rows, "name": "shop", "only_changed": True}
    assert client.post("/v1/batches", json={"catalog": catalog}, headers=headers).status_code == 201
    with session_scope(sessions) as s:
        for job in s.scalars(sa.select(Job)).all():
            assert job.catalog_ref is not None
            # B2 and C3 share an object (as two rows with the same content would).
            key = "acme/shared.jpg" if job.custom_id in ("B2", "C3") else f"acme/{job.custom_id}.jpg"
            storage.write(key, [b"jpeg"])
            s.add(CatalogEntry(tenant="acme", catalog="shop", row_id=job.custom_id,
                               content_key=job.catalog_ref["content_key"], images=[{"index": 0, "storage_key": key}]))
    kept = client.post("/v1/batches", json={"catalog": {**catalog, "rows": rows[2:]}}, headers=headers).json
    assert kept["catalog"]["removed"] == 2 and kept["state"] == "succeeded"
    assert storage.exists("acme/A1.jpg")  # without prune, removed rows keep their images
    with session_scope(sessions) as s:
        s.execute(sa.update(CatalogEntry).values(removed_at=None))
    pruned = client.post("/v1/batches", json={"catalog": {**catalog, "rows": rows[2:], "prune": True}},
                         headers=headers).json
    assert pruned["catalog"]["removed"] == 2
    assert not storage.exists("acme/A1.jpg") and storage.exists("acme/shared.jpg")  # C3 still uses it
