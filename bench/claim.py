"""Claim benchmark: one claim round's time with a shallow and a deep queue.

    python bench/claim.py [--depths 1000,100000] [--slots 16] [--trials 40]

For each depth, a scratch database gets one batch of that many queued fal jobs (inserted in
bulk, then ANALYZEd); each trial runs `workers.admission.claim` for --slots free slots in a
transaction that is rolled back, so every trial claims from the same queue. The same rows are
also read with the claim query this project used before the partial index
(`ORDER BY CASE lane ...`, which reads and sorts every queued row), for comparison. Times are
medians in milliseconds; the target is deep / shallow <= 1.5.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
import uuid
from typing import Any

import _common as common
import sqlalchemy as sa

from orchestrator.db import make_engine, make_session_factory, new_id, utcnow
from orchestrator.models import Batch, Job
from orchestrator.settings import Settings
from workers import admission

OLD_QUERY = (sa.select(Job.id).where(Job.provider == "fal", Job.state == "queued", Job.next_attempt_at <= sa.func.now())
             .order_by(sa.case((Job.lane == "interactive", 0), else_=1), Job.next_attempt_at, Job.position))


def fill(db_url: str, depth: int) -> None:
    """One batch of `depth` queued fal jobs."""
    engine = make_engine(db_url)
    now = utcnow()
    with engine.begin() as conn:
        batch_id = new_id()
        conn.execute(sa.insert(Batch).values(id=batch_id, tenant="bench", name="claim", total=depth,
                                             count_queued=depth))
        rows: list[dict[str, Any]] = []
        for i in range(depth):
            rows.append({"id": uuid.uuid4(), "batch_id": batch_id, "tenant": "bench", "position": i,
                         "custom_id": f"c{i}", "requested_model": "fal-ai/flux/schnell", "provider": "fal",
                         "model": "fal-ai/flux/schnell", "lane": "bulk" if i % 2 else "interactive",
                         "params": {"prompt": f"p{i}", "width": 1024, "height": 768, "num_images": 1,
                                    "output_format": "jpeg"},
                         "state": "queued", "next_attempt_at": now, "callback_token": secrets.token_urlsafe(24)})
            if len(rows) == 5000:
                conn.execute(sa.insert(Job), rows)
                rows = []
        if rows:
            conn.execute(sa.insert(Job), rows)
        conn.exec_driver_sql("ANALYZE jobs")
    engine.dispose()


def time_claims(db_url: str, slots: int, trials: int) -> tuple[float, float, int]:
    """(median claim ms, median old-query ms, jobs per claim)."""
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    settings = Settings(fal_max_in_flight=slots, fal_rate_per_second=1e6)
    new, old, taken = [], [], 0
    for _ in range(trials):
        session = sessions()
        try:
            start = time.perf_counter()
            result = admission.claim(session, settings, "fal", utcnow(), max_claim=slots)
            new.append(1000 * (time.perf_counter() - start))
            taken = len(result.jobs)
        finally:
            session.rollback()
            session.close()
        with engine.connect() as conn:
            start = time.perf_counter()
            conn.execute(OLD_QUERY.limit(slots).with_for_update(skip_locked=True)).all()
            old.append(1000 * (time.perf_counter() - start))
            conn.rollback()
    engine.dispose()
    return statistics.median(new), statistics.median(old), taken


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--depths", default="1000,100000", help="queue depths, comma-separated")
    parser.add_argument("--slots", type=int, default=16, help="free slots per claim (default 16)")
    parser.add_argument("--trials", type=int, default=40, help="claims per depth (default 40)")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    rows = []
    for depth in depths:
        with common.scratch_database() as db_url:
            common.note(f"filling {depth} queued jobs")
            fill(db_url, depth)
            rows.append((depth, *time_claims(db_url, args.slots, args.trials)))
    print(f"\nOne claim round for {args.slots} free slots (median of {args.trials}, rolled back; the machine is "
          "shared)")
    common.print_table(["queued jobs", "jobs claimed", "claim ms (admission.claim)", "old query ms (read only)"],
                       [[d, n, c, o] for d, c, o, n in rows])
    first, last = rows[0], rows[-1]
    print(f"\nclaim {last[0]:,} / {first[0]:,} queued: {last[1] / first[1]:.2f}x (target <= 1.5); the old query: "
          f"{last[2] / first[2]:.1f}x")


if __name__ == "__main__":
    main()
