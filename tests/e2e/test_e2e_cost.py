"""Cost end to end: real workers, both sandboxes (which bill by their providers' rules), the API."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.pricing import DEFAULT_PRICES
from tests.conftest import StackFactory, make_key
from tests.stack import Stack

pytestmark = pytest.mark.slow
FAST_BUDGET = {"ORCH_BUDGET_RECHECK_SECONDS": "0.5"}


def manifest(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/batches/{batch_id}/results")
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def test_mixed_batch_costs_match_the_table_and_the_reports(make_stack: StackFactory,
                                                           sessions: sessionmaker[Session]) -> None:
    stack = make_stack()
    stack.start_worker("w1", concurrency=4)
    client = stack.client(make_key(sessions, "acme"))
    items = [
        {"custom_id": "schnell-1mp", "model": "fal-ai/flux/schnell", "prompt": "a koi pond", "image_size": "square_hd"},
        # 1.5 MP per image: fal bills 2 MP each
        {"custom_id": "dev-2x", "model": "fal-ai/flux/dev", "prompt": "a cliff", "width": 1536, "height": 1024,
         "num_images": 2},
        {"custom_id": "lora", "model": "fal-ai/flux-lora", "prompt": "an owl", "image_size": "square"},
        {"custom_id": "rw-2x", "model": "runware:100@1", "prompt": "a fox", "width": 1024, "height": 1024,
         "num_images": 2},
        {"custom_id": "rw-dev", "model": "runware:101@1", "prompt": "a heron", "width": 512, "height": 768},
    ]
    estimate = client.post("/v1/batches", json={"items": items, "dry_run": True}).json()
    expected = {"schnell-1mp": Decimal("0.003"), "dev-2x": Decimal("0.100"), "lora": Decimal("0.035"),
                "rw-2x": Decimal("0.0026"), "rw-dev": Decimal("0.001425")}
    assert Decimal(str(estimate["estimated_cost"])) == sum(expected.values())
    # A batch cap equal to the estimate does not hold anything back.
    batch = client.post("/v1/batches", json={"items": items, "max_cost_usd": estimate["estimated_cost"]}).json()
    done = stack.wait_batch(client, batch["id"], timeout=120)
    assert done["state"] == "succeeded", stack.logs()
    lines = {line["custom_id"]: line for line in manifest(client, batch["id"])}
    for cid, line in lines.items():
        assert Decimal(str(line["cost"])) == expected[cid], cid
        assert line["cost_source"] == ("priced" if line["provider"] == "fal" else "reported"), cid
        assert all(img["cost"] is not None and img["cost_source"] == line["cost_source"] for img in line["images"])
    assert [i["cost"] for i in lines["dev-2x"]["images"]] == [0.05, 0.05]
    # Runware's figure is what it reported; fal's what its own billing charged (the sandbox ledgers).
    runware_reported = {c["request_id"]: c["usd"] for c in stack.runware.ledger.charges}
    assert len(runware_reported) == 2
    assert stack.runware.ledger.charged() == pytest.approx(float(expected["rw-2x"] + expected["rw-dev"]), abs=1e-9)
    fal_total = sum(v for k, v in expected.items() if lines[k]["provider"] == "fal")
    assert stack.fal.ledger.charged() == pytest.approx(float(fal_total), abs=1e-9)
    # The estimate equals the final cost when nothing failed over; the batch keeps the total.
    final = Decimal(str(done["cost"]))
    assert final == Decimal(str(estimate["estimated_cost"])) == Decimal(str(done["estimated_cost"]))
    metrics = httpx.get(f"{stack.api_url}/metrics").text
    assert 'orchestrator_spend_usd{provider="fal",model="fal-ai/flux/dev",source="priced"} 0.100000' in metrics
    assert 'orchestrator_spend_usd{provider="runware",model="runware:100@1",source="reported"} 0.002600' in metrics


def _settled(stack: Stack, client: httpx.Client, ids: list[str], succeeded: int = 0) -> list[dict[str, Any]]:
    """Poll until no job of these batches is at a provider and every queued one is held by the budget."""
    deadline = time.monotonic() + 120
    views: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        views = [client.get(f"/v1/batches/{i}").json() for i in ids]
        if all(v["counts"]["submitting"] + v["counts"]["submitted"] + v["counts"]["storing"] == 0
               and v["counts"]["queued"] == v["held_by_budget"] > 0
               and sum(x["counts"]["succeeded"] for x in views) >= succeeded for v in views):
            return views
        time.sleep(0.25)
    raise AssertionError(f"never settled: {views}\n{stack.logs()}")


def test_tenant_cap_holds_with_three_workers_racing(make_stack: StackFactory,
                                                    sessions: sessionmaker[Session]) -> None:
    stack = make_stack(env=FAST_BUDGET)
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name, concurrency=4)
    stack.start_beat()
    client = stack.client(make_key(sessions, "acme"))
    admin = stack.client(make_key(sessions, "acme", role="admin"))
    cap = Decimal("0.045")
    assert admin.put("/v1/budget", json={"daily_usd": str(cap)}).status_code == 200
    fal = [{"custom_id": f"f{i}", "model": "fal-ai/flux/schnell", "prompt": f"a lamp {i}", "image_size": "square_hd"}
           for i in range(20)]  # $0.003 each
    rw = [{"custom_id": f"r{i}", "model": "runware:100@1", "prompt": f"a vase {i}", "width": 1024, "height": 1024}
          for i in range(20)]  # $0.0013 each
    ids = [client.post("/v1/batches", json={"items": fal}).json()["id"],
           client.post("/v1/batches", json={"items": rw}).json()["id"]]
    views = _settled(stack, client, ids)
    spent = Decimal(str(stack.fal.ledger.charged())) + Decimal(str(stack.runware.ledger.charged()))
    assert spent <= cap, f"spent {spent} over the cap {cap}"
    # Stopped exactly at the limit: no held job would still have fit.
    cheapest_held = min(Decimal("0.003") if v is views[0] else Decimal("0.0013") for v in views
                        if v["held_by_budget"])
    assert cap - spent < cheapest_held, (spent, views)
    recorded = sum(Decimal(str(v["cost"])) for v in views)
    assert recorded == spent  # what we recorded is what the providers billed
    assert Decimal(str(client.get("/v1/budget").json()["spent_today_usd"])) == spent
    # A few more re-checks change nothing (nothing else fits).
    time.sleep(2.0)
    assert Decimal(str(stack.fal.ledger.charged())) + Decimal(str(stack.runware.ledger.charged())) == spent
    # Raising the cap lets the held jobs go; everything finishes, each job submitted once.
    assert admin.put("/v1/budget", json={"daily_usd": 1}).status_code == 200
    for batch_id in ids:
        assert stack.wait_batch(client, batch_id, timeout=120)["state"] == "succeeded", stack.logs()
    total = Decimal(str(stack.fal.ledger.charged())) + Decimal(str(stack.runware.ledger.charged()))
    assert total == 20 * Decimal("0.003") + 20 * Decimal("0.0013")
    assert set(stack.submissions_per_job("fal").values()) == {1} and len(stack.submissions_per_job("fal")) == 20


def test_batch_cap_holds_with_three_workers_and_raising_it_resumes(make_stack: StackFactory,
                                                                  sessions: sessionmaker[Session]) -> None:
    stack = make_stack(env=FAST_BUDGET)
    client = stack.client(make_key(sessions, "acme"))
    price = DEFAULT_PRICES["fal-ai/flux/dev"].image(1024, 1024)
    items = [{"custom_id": f"d{i}", "model": "flux-dev", "prompt": f"a dune {i}", "image_size": "square_hd"}
             for i in range(12)]
    capped = client.post("/v1/batches", json={"items": items, "max_cost_usd": 0.3}).json()  # fits: 12 x $0.025
    lowered = client.patch(f"/v1/batches/{capped['id']}", json={"max_cost_usd": 0.1})  # now 4 of 12 fit
    assert lowered.status_code == 200 and lowered.json()["max_cost_usd"] == 0.1
    free = client.post("/v1/batches", json={"items": items[:3]}).json()  # another batch: not held
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name, concurrency=4)
    stack.start_beat()
    assert stack.wait_batch(client, free["id"], timeout=120)["state"] == "succeeded", stack.logs()
    (view,) = _settled(stack, client, [capped["id"]])
    assert view["counts"]["succeeded"] == 4 and view["held_by_budget"] == 8
    assert Decimal(str(view["cost"])) == 4 * price
    assert stack.fal.ledger.charged() == pytest.approx(float(7 * price), abs=1e-9)
    jobs = client.get(f"/v1/batches/{capped['id']}/jobs?state=queued").json()["data"]
    assert {j["hold_reason"] for j in jobs} == {"budget"}
    timeline = client.get(f"/v1/jobs/{jobs[0]['id']}").json()["events"]
    assert next(e for e in timeline if e["kind"] == "held")["detail"]["cap"] == "max_cost_usd"
    bad = client.patch(f"/v1/batches/{capped['id']}", json={"max_cost_usd": "plenty"})
    assert bad.status_code == 422 and bad.json()["field"] == "max_cost_usd"
    raised = client.patch(f"/v1/batches/{capped['id']}", json={"max_cost_usd": 0.2}).json()  # 8 fit now
    assert raised["max_cost_usd"] == 0.2
    (view,) = _settled(stack, client, [capped["id"]], succeeded=8)
    assert view["counts"]["succeeded"] == 8 and view["held_by_budget"] == 4
    # Cancel behaves as before: held jobs are simply cancelled.
    cancelled = client.post(f"/v1/batches/{capped['id']}/cancel").json()
    assert cancelled["cancelled_jobs"] == 4 and cancelled["held_by_budget"] == 0 and cancelled["state"] == "cancelled"
    assert stack.fal.ledger.charged() == pytest.approx(float(11 * price), abs=1e-9)
