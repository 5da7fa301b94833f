"""What budget caps cost the claim step: admission rounds with and without caps, on real Postgres.

Each configuration gets a fresh scratch database with the same queued jobs (and, for the
"history" rows, a month of already-billed jobs of the same tenant that the spend sum must read),
then claims them all in rounds of 32 exactly as a dispatch worker does (`admission.claim`, one
transaction per round). The caps are set high enough never to hold a job, so every configuration
claims the same jobs and only the bookkeeping differs. Ratios are against the uncapped baseline
measured in the same run.

    python bench/budget.py [--jobs 2000] [--history 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta
from decimal import Decimal

import sqlalchemy as sa
from _common import note, print_table, scratch_database

from orchestrator import batches, budget, intake
from orchestrator.db import make_engine, make_session_factory, session_scope, utcnow
from orchestrator.models import Job, JobState
from orchestrator.schemas import BatchRequest
from orchestrator.settings import Settings
from workers import admission

TENANT = "bench"
SETTINGS = Settings(fal_max_in_flight=10**7, fal_rate_per_second=10**7, budget_recheck_seconds=60)


def _batch(session: sa.orm.Session, n: int, max_cost: float | None) -> None:
    items = [{"custom_id": f"j{i}", "model": "fal-ai/flux/schnell", "prompt": f"a lamp {i}",
              "image_size": "square_hd"} for i in range(n)]
    body: dict[str, object] = {"items": items}
    if max_cost is not None:
        body["max_cost_usd"] = max_cost
    plan = intake.plan(BatchRequest.model_validate(body), 10**6)
    batches.create_batch(session, TENANT, plan, idempotency_key=None, request_hash=None)


def _history(session: sa.orm.Session, n: int) -> None:
    """n billed jobs this month (one batch), so the tenant's spend sum has rows to read."""
    _batch(session, n, None)
    session.execute(sa.update(Job).values(state=JobState.succeeded, cost=Decimal("0.003"), cost_source="priced",
                                          charged_at=utcnow() - timedelta(minutes=5)))


def run(config: str, jobs: int, history: int) -> list[float]:
    """Claim every queued job in rounds; returns the seconds each round took."""
    with scratch_database() as url:
        from orchestrator.migrate import upgrade

        upgrade(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            if config.endswith("history"):
                _history(session, history)
            _batch(session, jobs, 1000.0 if config.startswith("batch cap") else None)
            if config.startswith("tenant cap"):
                budget.set_budget(session, TENANT, {"daily_usd": 900, "monthly_usd": 9000})
        rounds: list[float] = []
        claimed = 0
        while claimed < jobs:
            start = time.perf_counter()
            with session_scope(factory) as session:
                got = len(admission.claim(session, SETTINGS, "fal", utcnow()).jobs)
            rounds.append(time.perf_counter() - start)
            claimed += got
            if got == 0:
                raise RuntimeError(f"{config}: a round claimed nothing after {claimed} jobs")
        engine.dispose()
        return rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--history", type=int, default=20000)
    args = parser.parse_args()
    configs = ["no caps (baseline)", "batch cap", "tenant cap", "tenant cap + history"]
    results = {c: run(c, args.jobs, args.history) for c in configs}
    base = statistics.median(results[configs[0]])
    rows = []
    for config, rounds in results.items():
        p50 = statistics.median(rounds)
        rows.append([config, len(rounds), f"{p50 * 1000:.2f}", f"{sorted(rounds)[int(len(rounds) * 0.95)] * 1000:.2f}",
                     f"{sum(rounds):.2f}", f"{p50 / base:.2f}x"])
    note(f"claiming {args.jobs} queued jobs in rounds of 32 (history: {args.history} billed jobs this month)")
    print_table(["config", "rounds", "p50 ms/round", "p95 ms/round", "total s", "p50 vs baseline"], rows)


if __name__ == "__main__":
    main()
