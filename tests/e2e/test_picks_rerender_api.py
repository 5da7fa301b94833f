"""Picks and re-render through /v1 and the CLI, on a real stack (workers, sandboxes, storage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main
from orchestrator.models import Batch
from tests.conftest import StackFactory, make_key

pytestmark = pytest.mark.slow


def test_picks_and_rerender_via_api_and_cli(make_stack: StackFactory, sessions: sessionmaker[Session],
                                            tmp_path: Path) -> None:
    stack = make_stack()
    stack.start_worker("w1")
    key = make_key(sessions, "acme")
    client = stack.client(key)
    body = {"name": "drafts", "items": [{"custom_id": f"d{i}", "model": "flux-schnell", "prompt": f"a red fox {i}",
                                         "seed": 100 + i} for i in range(3)]}
    batch = stack.wait_batch(client, client.post("/v1/batches", json=body).json()["id"])
    assert batch["state"] == "succeeded", stack.logs()
    lines = [json.loads(x) for x in client.get(f"/v1/batches/{batch['id']}/results").text.splitlines()]
    assets = [img["asset_id"] for line in lines for img in line["images"]]
    assert len(assets) == 3 and all(assets)

    changed = client.post(f"/v1/batches/{batch['id']}/picks", json={"add": assets[:2]}).json()
    assert changed["added"] == 2 and [p["custom_id"] for p in changed["data"]] == ["d0", "d1"]
    again = client.post(f"/v1/batches/{batch['id']}/picks", json={"add": assets[:2], "remove": []}).json()
    assert again["added"] == 0 and len(again["data"]) == 2  # idempotent

    # Another tenant sees nothing of it, and cannot pick it.
    other = stack.client(make_key(sessions, "other"))
    assert other.get(f"/v1/batches/{batch['id']}/picks").status_code == 404
    # Bad input: a 400/422 naming the problem, never a 5xx.
    bad = client.post(f"/v1/batches/{batch['id']}/picks", json={"add": ["nope"]})
    assert bad.status_code == 400 and "not an image id" in bad.json()["detail"]
    assert client.post(f"/v1/batches/{batch['id']}/picks", json={"add": [], "bogus": 1}).status_code == 422

    runner = CliRunner()
    env = {"ORCH_API_URL": stack.api_url, "ORCH_API_KEY": key}
    out = runner.invoke(main, ["picks", "export", batch["id"], str(tmp_path / "export")], env=env)
    assert out.exit_code == 0, out.output
    exported = [json.loads(x) for x in (tmp_path / "export" / "manifest.jsonl").read_text().splitlines()]
    assert [e["custom_id"] for e in exported] == ["d0", "d1"]
    assert (tmp_path / "export" / "contact-sheet.png").stat().st_size > 0
    assert all((tmp_path / "export" / e["images"][0]["file"]).is_file() for e in exported)

    # Re-render the picks on another model with the same seeds: a new batch linked to its parent.
    resp = client.post(f"/v1/batches/{batch['id']}/rerender", json={"picks": True, "model": "flux-dev"})
    assert resp.status_code == 201, resp.text
    child = resp.json()
    assert child["parent_batch_id"] == batch["id"] and child["total"] == 2
    child = stack.wait_batch(client, child["id"])
    assert child["state"] == "succeeded", stack.logs()
    jobs = client.get(f"/v1/batches/{child['id']}/jobs").json()["data"]
    assert sorted((j["custom_id"], j["params"]["seed"], j["model"]) for j in jobs) == [
        ("d0", 100, "fal-ai/flux/dev"), ("d1", 101, "fal-ai/flux/dev")]
    assert {j["params"]["prompt"] for j in jobs} == {"a red fox 0", "a red fox 1"}

    # The CLI: new seeds for one image, same model.
    out = runner.invoke(main, ["rerender", batch["id"], "--asset", assets[2], "--new-seeds"], env=env)
    assert out.exit_code == 0, out.output
    with sessions() as s:
        kids = s.scalars(sa.select(Batch).where(Batch.parent_batch_id == sa.text(f"'{batch['id']}'"))).all()
        assert len(kids) == 2
    bad = client.post(f"/v1/batches/{batch['id']}/rerender", json={"model": "no-such-model"})
    assert bad.status_code == 422 and "model" in bad.text

    spec = client.get("/v1/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(spec["/v1/batches/{batch_id}/picks"]) and "post" in spec[
        "/v1/batches/{batch_id}/rerender"]
