"""Nightly catalogs end to end: real workers and scheduler, both sandboxes, local storage.

A schedule reads its CSV from storage at each firing; the second night generates only the
edited and added rows (the sandbox ledger proves nothing else was paid for), reports the removed
one, and the stable keys switch to a new image only once it is verified. A failed night
(source gone; provider failing) leaves yesterday's images in place.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main
from orchestrator.db import session_scope
from orchestrator.models import Asset, Job
from tests.conftest import StackFactory, make_key
from tests.stack import CallbackReceiver, Stack

pytestmark = pytest.mark.slow

HEADER = "sku,product,colour\n"
NIGHT1 = {"A1": ("mug", "red"), "B2": ("lamp", "blue"), "C3": ("chair", "green"), "D4": ("vase", "white"),
          "E5": ("clock", "black")}


def _csv(rows: dict[str, tuple[str, str]]) -> str:
    return HEADER + "".join(f"{sku},{p},{c}\n" for sku, (p, c) in rows.items())


def _write_source(stack: Stack, text: str | None) -> Path:
    path = stack.tmp / "storage" / "acme" / "catalog" / "products.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)
    return path


def _stable(stack: Stack, sku: str, ext: str = "jpg") -> Path:
    return stack.tmp / "storage" / "acme" / "catalog" / sku / f"0.{ext}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _night(stack: Stack, client: httpx.Client, sid: str, runs_before: int, timeout: float = 90) -> dict[str, Any]:
    """Make the schedule due now; wait for the scheduler to record the run (and its batch to end)."""
    assert client.post(f"/v1/schedules/{sid}/run").status_code == 202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.get(f"/v1/schedules/{sid}").json()["last_runs"]
        if len(runs) > runs_before:
            run = runs[0]
            if run["batch_id"]:
                stack.wait_batch(client, run["batch_id"], timeout=timeout)
                run = client.get(f"/v1/schedules/{sid}").json()["last_runs"][0]
            return run
        time.sleep(0.3)
    raise AssertionError(f"the schedule did not fire\n{stack.logs()}")


def _manifest(client: httpx.Client, batch_id: str) -> dict[str, dict[str, Any]]:
    lines = [json.loads(x) for x in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def _counts(run: dict[str, Any]) -> dict[str, int]:
    return {k: run["summary"][k] for k in ("read", "new", "changed", "unchanged", "removed", "failed")}


def test_second_night_pays_only_for_what_changed(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack(fal_faults=None)
    stack.fal.set_faults(latency_min=0.3, latency_max=0.6)
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    receiver = CallbackReceiver()
    _write_source(stack, _csv(NIGHT1))
    template = {"callback_url": receiver.url, "catalog": {
        "model": "fal-ai/flux/schnell", "template": "Studio photo of a {colour} {product}", "id_field": "sku",
        "image_size": "square", "name": "products", "source": "storage:catalog/products.csv",
        "key_pattern": "catalog/{sku}/{n}.{ext}"}}
    created = client.post("/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *", "template": template})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]

    night1 = _night(stack, client, sid, 0)
    assert night1["status"] == "created" and night1["batch_state"] == "succeeded", (night1, stack.logs())
    assert _counts(night1) == {"read": 5, "new": 5, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0}
    assert len(stack.submissions("fal")) == 5
    batch1 = client.get(f"/v1/batches/{night1['batch_id']}").json()
    assert batch1["lane"] == "bulk"  # schedules default to the cheap lane: fal low queue priority
    old = {sku: _sha(_stable(stack, sku)) for sku in NIGHT1}
    manifest1 = _manifest(client, night1["batch_id"])
    for sku in NIGHT1:  # the stable key holds the verified image, and the manifest points at it
        image = manifest1[sku]["images"][0]
        assert image["storage_key"] == f"acme/catalog/{sku}/0.jpg" and image["sha256"] == old[sku]

    # Night 2: B2 edited, C3 removed, F6 added; the rest unchanged.
    night2_rows = {**NIGHT1, "B2": ("lamp", "yellow"), "F6": ("rug", "grey")}
    del night2_rows["C3"]
    _write_source(stack, _csv(night2_rows))
    assert client.post(f"/v1/schedules/{sid}/run").status_code == 202
    # While it runs, the stable key of B2 only ever holds yesterday's image or a verified new one.
    batch2_id = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen = _sha(_stable(stack, "B2"))
        if seen != old["B2"]:
            with session_scope(sessions) as s:
                verified = s.scalar(sa.select(sa.func.count()).select_from(Asset).where(
                    Asset.sha256 == seen, Asset.stored_at.is_not(None)))
            assert verified == 1, "the stable key changed before the new image was verified"
        runs = client.get(f"/v1/schedules/{sid}").json()["last_runs"]
        if len(runs) == 2 and runs[0]["batch_state"] in ("succeeded", "partially_failed", "failed"):
            batch2_id = runs[0]["batch_id"]
            break
        time.sleep(0.05)
    assert batch2_id, stack.logs()
    night2 = client.get(f"/v1/schedules/{sid}").json()["last_runs"][0]
    assert _counts(night2) == {"read": 5, "new": 1, "changed": 1, "unchanged": 3, "removed": 1, "failed": 0}
    # The ledger: exactly the two changed rows were paid for, nothing else.
    subs = stack.submissions("fal")
    assert len(subs) == 7
    assert sorted(s["input"]["prompt"] for s in subs[5:]) == ["Studio photo of a grey rug",
                                                             "Studio photo of a yellow lamp"]
    assert {s["priority"] for s in subs} == {"low"}
    assert _sha(_stable(stack, "B2")) != old["B2"]
    for sku in ("A1", "D4", "E5", "C3"):  # unchanged rows, and the removed row (no prune), keep their images
        assert _sha(_stable(stack, sku)) == old[sku]
    manifest2 = _manifest(client, batch2_id)
    assert set(manifest2) == {"A1", "B2", "D4", "E5", "F6"}
    assert manifest2["A1"]["status"] == "succeeded" and manifest2["A1"]["images"][0]["sha256"] == old["A1"]
    assert manifest2["B2"]["images"][0]["sha256"] == _sha(_stable(stack, "B2"))
    # The completion callback carries the summary; so do /metrics and the CLI.
    deadline = time.monotonic() + 30
    while len(receiver.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    summaries = [json.loads(body)["data"].get("catalog") for _, body in receiver.calls]
    assert {"read": 5, "new": 1, "changed": 1, "unchanged": 3, "removed": 1, "failed": 0}.items() <= \
        summaries[-1].items()
    receiver.close()
    metrics = client.get("/metrics").text
    assert 'orchestrator_catalog_rows_total{outcome="unchanged"} 3' in metrics
    assert 'orchestrator_schedule_last_run_rows{tenant="acme",schedule="nightly",outcome="changed"} 1' in metrics
    env = {"ORCH_API_URL": stack.api_url, "ORCH_API_KEY": client.headers["Authorization"].split()[1]}
    shown = CliRunner().invoke(main, ["schedules", sid], env=env)
    assert shown.exit_code == 0 and "new 1, changed 1, unchanged 3, removed 1, failed 0" in shown.output

    # The same diff by hand: the CLI with --only-changed on the same CSV pays for nothing.
    csv_file = stack.tmp / "products.csv"
    csv_file.write_text(_csv(night2_rows))
    out = CliRunner().invoke(main, ["submit", str(csv_file), "--model", "fal-ai/flux/schnell", "--template",
                                    "Studio photo of a {colour} {product}", "--id-field", "sku", "--sizes", "square",
                                    "--only-changed"], env=env)
    assert out.exit_code == 0, out.output
    assert "unchanged 5" in out.output and "state succeeded" in out.output
    assert len(stack.submissions("fal")) == 7


def test_a_failed_night_leaves_yesterdays_images(make_stack: StackFactory, sessions: sessionmaker[Session]) -> None:
    stack = make_stack()
    stack.start_worker("w1")
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    rows = {"A1": ("mug", "red"), "B2": ("lamp", "blue")}
    _write_source(stack, _csv(rows))
    template = {"catalog": {"model": "runware:100@1", "template": "Studio photo of a {colour} {product}",
                            "id_field": "sku", "width": 512, "height": 512, "output_format": "png",
                            "source": "storage:catalog/products.csv", "key_pattern": "catalog/{sku}/{n}.{ext}"}}
    created = client.post("/v1/schedules", json={"name": "shop", "cron": "0 3 * * *", "template": template})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    night1 = _night(stack, client, sid, 0)
    assert night1["batch_state"] == "succeeded", stack.logs()
    old = {sku: _sha(_stable(stack, sku, "png")) for sku in rows}
    assert len(stack.submissions("runware")) == 2

    # Night 2: the source is gone. The run fails visibly; nothing is generated; images stay.
    _write_source(stack, None)
    night2 = _night(stack, client, sid, 1)
    assert night2["status"] == "failed" and "does not exist" in night2["error"]
    shown = client.get(f"/v1/schedules/{sid}").json()
    assert shown["enabled"] and "does not exist" in shown["last_error"]
    assert len(stack.submissions("runware")) == 2
    assert {sku: _sha(_stable(stack, sku, "png")) for sku in rows} == old

    # Night 3: B2 changes but the provider fails every generation: B2 keeps yesterday's image.
    stack.runware.set_faults(failure_rate=1.0)
    _write_source(stack, _csv({**rows, "B2": ("lamp", "yellow")}))
    night3 = _night(stack, client, sid, 2)
    assert night3["batch_state"] == "partially_failed", stack.logs()
    assert _counts(night3) == {"read": 2, "new": 0, "changed": 1, "unchanged": 1, "removed": 0, "failed": 1}
    assert {sku: _sha(_stable(stack, sku, "png")) for sku in rows} == old
    assert client.get(f"/v1/schedules/{sid}").json()["last_error"] is None

    # Night 4: the provider is back; the changed row is tried again (the index still has the old content).
    stack.runware.set_faults(failure_rate=0.0)
    paid = len(stack.submissions("runware"))
    night4 = _night(stack, client, sid, 3)
    assert night4["batch_state"] == "succeeded"
    assert _counts(night4) == {"read": 2, "new": 0, "changed": 1, "unchanged": 1, "removed": 0, "failed": 0}
    assert len(stack.submissions("runware")) == paid + 1
    assert _sha(_stable(stack, "A1", "png")) == old["A1"] and _sha(_stable(stack, "B2", "png")) != old["B2"]
    with session_scope(sessions) as s:
        job = s.scalars(sa.select(Job).where(Job.batch_id == uuid.UUID(night4["batch_id"]),
                                             Job.custom_id == "B2")).one()
        [asset] = s.scalars(sa.select(Asset).where(Asset.job_id == job.id)).all()
        assert asset.storage_key == "acme/catalog/B2/0.png" and asset.sha256 == _sha(_stable(stack, "B2", "png"))
