"""Nightly catalog benchmark: 20,000 rows, 2 % changed between nights, only_changed on.

Night 1's state is seeded directly (20,000 index entries and an object at every stable key), as
if a first night had generated and stored every row; generating 20,000 sandbox images would
only measure the pipeline, which bench/dispatch.py already does. Night 2 then runs for real:
the CSV in storage has 400 edited rows, the scheduler (`orchestrator beat`) fires the slot,
a worker reads the source, validates every row, diffs it against the index and writes the
batch, and the 400 changed rows go through the fal sandbox, the store step and the stable-key
switch. The sandbox ledger counts what was paid for.

Phases of a firing are also timed in-process (each in a transaction that is rolled back), and
compared with the baseline of the same firing without only_changed (every row regenerated).

    python bench/catalog.py [--rows 20000] [--changed 400] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common as common  # bench/ is on sys.path when run as `python bench/catalog.py`
import httpx
import sqlalchemy as sa

from orchestrator import catalog_runs, catalog_source, intake, schedules
from orchestrator.db import make_engine, make_session_factory, session_scope, utcnow
from orchestrator.models import FINAL_BATCH, Batch
from orchestrator.netutil import free_port
from orchestrator.schedule_models import CatalogEntry, Schedule
from orchestrator.schemas import ScheduleIn
from orchestrator.storage.local import LocalStorage

TENANT = "bench"
SECRET = "bench-secret-key-0123456789"
SOURCE_KEY = "catalog/products.csv"
COLOURS = ("red", "blue", "green", "white", "black", "grey", "yellow", "orange")


def csv_text(rows: int, changed: int) -> str:
    """The catalog; the first `changed` rows (spread over the file) get another colour."""
    step = max(1, rows // max(1, changed))
    edited = set(range(0, step * changed, step)) if changed else set()
    lines = ["sku,product,colour"]
    for i in range(rows):
        colour = COLOURS[(i + (3 if i in edited else 0)) % len(COLOURS)]
        lines.append(f"S{i:05d},product {i},{colour}")
    return "\n".join(lines) + "\n"


TEMPLATE = {"catalog": {"model": "fal-ai/flux/schnell", "template": "Studio photo of a {colour} {product}",
                        "id_field": "sku", "image_size": "square", "source": f"storage:{SOURCE_KEY}",
                        "key_pattern": "catalog/{sku}/{n}.{ext}"}}


def seed_night1(factory: Any, storage: LocalStorage, schedule: Schedule, rows: int) -> None:
    """The index and objects night 1 would have left: every row stored at its stable key."""
    body = schedules.effective_template(schedule.template)
    body["catalog"].pop("source")
    body["catalog"]["rows"] = catalog_source.parse_rows(csv_text(rows, 0).encode(), "csv", None, rows)
    plan = intake.plan(intake.parse_json(json.dumps(body).encode(), rows), rows)
    name = f"schedule-{schedule.id}"
    refs = catalog_runs.row_refs(plan, TENANT, name)
    entries = []
    for ref in refs:
        # Plain writes: the backend's fsync per object would make seeding, not the run, the slow part.
        path = storage.path_for(ref.keys[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"night 1 image")
        entries.append({"tenant": TENANT, "catalog": name, "row_id": ref.row_id, "content_key": ref.content_key,
                        "images": [{"index": 0, "storage_key": ref.keys[0], "sha256": "0" * 64,
                                    "content_type": "image/jpeg", "width": 512, "height": 512, "bytes": 13}],
                        "updated_at": utcnow()})
    with session_scope(factory) as session:
        for start in range(0, len(entries), 5000):
            session.execute(sa.insert(CatalogEntry), entries[start:start + 5000])


def timed(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Median seconds over `repeat` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def phases(factory: Any, storage: LocalStorage, schedule_id: Any, rows: int, repeat: int) -> list[list[Any]]:
    """Each step of a firing on its own, then the whole firing with and without only_changed."""
    env = schedules.SlotEnv(storage=storage)
    name = f"schedule-{schedule_id}"
    out: list[list[Any]] = []
    source = catalog_source.parse(f"storage:{SOURCE_KEY}", None, env.policy)
    with httpx.Client() as http:  # unused for a storage source
        t, data = timed(repeat, lambda: catalog_source.read_rows(source, TENANT, storage, http, env.policy))
    out.append(["read + parse the CSV", t, len(data)])
    body = schedules.effective_template(TEMPLATE)
    body["catalog"].pop("source")
    body["catalog"]["rows"] = data
    raw = json.dumps(body).encode()
    t, plan = timed(repeat, lambda: intake.plan(intake.parse_json(raw, rows), rows))
    out.append(["validate every row (as a submit)", t, len(plan.jobs)])
    t, refs = timed(repeat, lambda: catalog_runs.row_refs(plan, TENANT, name))
    out.append(["content keys + stable keys", t, len(refs)])

    def diff_once() -> catalog_runs.Diff:
        with factory() as session:
            result = catalog_runs.diff(session, TENANT, name, refs, catalog_runs.storage_exists(storage), utcnow())
            session.rollback()
            return result

    t, result = timed(repeat, diff_once)
    out.append(["diff against the index (incl. existence checks)", t, sum(1 for v in result.outcome.values()
                                                                           if v != "unchanged")])

    def fire(only_changed: bool) -> int:
        with factory() as session:
            schedule = session.get(Schedule, schedule_id)
            template = {**schedule.template, "catalog": {**schedule.template["catalog"], "only_changed": only_changed}}
            schedule.template = template
            batch = schedules.run_slot(session, schedule, utcnow(), rows, env)
            queued = batch.count_queued
            session.rollback()
            return queued

    t_base, sent_base = timed(repeat, lambda: fire(False))
    t_only, sent_only = timed(repeat, lambda: fire(True))
    out.append(["whole firing, every row regenerated (baseline)", t_base, sent_base])
    out.append(["whole firing, only_changed", t_only, sent_only])
    return out


def night2(db_url: str, tmp: Path, schedule_id: Any, sandbox: Any, timeout: float) -> dict[str, Any]:
    """Make the slot due, let beat + a worker fire and finish it; returns what happened."""
    common.flush_redis(common.REDIS_URL)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = common.orchestrator_env(db_url, common.REDIS_URL, tmp, api_url, {
        **common.fal_env(sandbox, 32), "ORCH_SWEEP_INTERVAL_SECONDS": "1", "ORCH_SECRET_KEY": SECRET,
        # A loaded machine drops connections now and then: let the sweep resume such jobs soon.
        "ORCH_STORING_STALE_SECONDS": "10", "ORCH_CLAIM_STALE_SECONDS": "10", "ORCH_POLL_AFTER_SECONDS": "10",
        "ORCH_POLL_INTERVAL_SECONDS": "5", "ORCH_DOWNLOAD_ALLOW_PRIVATE": "true"})  # the sandbox is on loopback
    procs = [common.start_api(env, port, tmp, 2, 8)]
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    try:
        procs.append(common.start_worker(env, "worker1", 16, tmp))
        machine0 = common.machine_cpu()
        before = len(common.accepted(sandbox.ledger))
        with session_scope(factory) as session:
            session.get(Schedule, schedule_id).next_run_at = utcnow() - timedelta(seconds=1)
        start = time.perf_counter()
        procs.append(common.spawn("beat", [sys.executable, "-m", "orchestrator.cli", "beat"], env, tmp))
        fired: dict[str, Any] = {}

        def created() -> bool:
            with factory() as session:
                batch = session.scalars(sa.select(Batch).where(Batch.schedule_id == schedule_id)).first()
                if batch is not None and not fired:
                    fired.update(at=time.perf_counter() - start, id=batch.id)
                return batch is not None and batch.state in FINAL_BATCH

        common.wait_until(created, timeout, "night 2 to finish", procs[1])
        wall = time.perf_counter() - start
        with factory() as session:
            batch = session.get(Batch, fired["id"])
            summary, counts = dict(batch.catalog_summary or {}), batch.counts()
        busy = common.busy_percent(machine0, common.machine_cpu())
    finally:
        for proc in procs:
            proc.stop()
        engine.dispose()
    return {"fired": fired["at"], "wall": wall, "summary": summary, "counts": counts, "busy": busy,
            "paid": len(common.accepted(sandbox.ledger)) - before,
            "problems": [f"{p.name}: {line}" for p in procs for line in p.log_problems()]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    with common.scratch_database() as db_url, tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp_name:
        tmp = Path(tmp_name)
        storage = LocalStorage(tmp / "storage", secret_key=SECRET, public_url="http://127.0.0.1:9")
        engine = make_engine(db_url)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            data = ScheduleIn.model_validate({"name": "nightly", "cron": "0 2 * * *", "template": TEMPLATE})
            schedule = schedules.create(session, TENANT, data, args.rows)
            schedule_id = schedule.id
        with factory() as session:
            schedule = session.get(Schedule, schedule_id)
            common.note(f"seeding night 1: {args.rows} index entries and stored objects ...")
            seed_night1(factory, storage, schedule, args.rows)
        storage.write(f"{TENANT}/{SOURCE_KEY}", [csv_text(args.rows, args.changed).encode()])
        common.note("timing the phases of a firing ...")
        table = phases(factory, storage, schedule_id, args.rows, args.repeat)
        engine.dispose()
        common.note("night 2 through the whole system ...")
        with common.fal_sandbox((0.05, 0.2), 100) as sandbox:
            run = night2(db_url, tmp, schedule_id, sandbox, args.timeout)

    base_t, base_sent = table[-2][1], table[-2][2]
    print(f"\nA firing over {args.rows:,} rows, {args.changed} edited since night 1 "
          f"(median of {args.repeat}; in-process, rolled back)")
    common.print_table(["phase", "seconds", "rows / jobs to send", "vs baseline firing"],
                       [[name, t, n, f"{t / base_t:.2f}x" if name.startswith("whole") else "-"]
                        for name, t, n in table])
    diff_t = table[3][1]
    print(f"\ndiff of {args.rows:,} rows: {diff_t:.2f} s (target < 5 s): {'met' if diff_t < 5 else 'NOT met'}")
    print(f"\nNight 2 through the system (beat + 1 worker x16 + API; fal sandbox 50-200 ms; "
          f"machine {run['busy']:.0f} % busy over the run)")
    summary = run["summary"]
    common.print_table(["", "value", "baseline (every row)"], [
        ["slot due -> batch written (s)", run["fired"], "-"],
        ["slot due -> batch final (s)", run["wall"], "-"],
        ["provider submissions (sandbox ledger)", run["paid"], base_sent],
        ["rows read / new / changed / unchanged / removed",
         f"{summary.get('read')} / {summary.get('new')} / {summary.get('changed')} / "
         f"{summary.get('unchanged')} / {summary.get('removed')}", "-"],
        ["jobs succeeded / failed", f"{run['counts']['succeeded']} / {run['counts']['failed']}", "-"],
    ])
    verdict = "exactly the changed rows" if run["paid"] == args.changed else f"EXPECTED {args.changed}"
    print(f"\nsubmissions on night 2: {run['paid']} ({verdict}); "
          f"{run['paid'] / max(1, base_sent):.1%} of a full regeneration")
    if run["problems"]:
        shown = sorted({line[:200] for line in run["problems"] if "ERROR" in line})[:5]
        print(f"\n{len(run['problems'])} error lines in the process logs, e.g.:\n  " + "\n  ".join(shown))


if __name__ == "__main__":
    main()
