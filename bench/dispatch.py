"""Dispatch benchmark: N jobs through the orchestrator vs the official fal-client in a thread pool.

    python bench/dispatch.py [--jobs 1000] [--latency 0.2,0.6] [--limit 16] [--workers 2]
                             [--worker-concurrency 8] [--repeat 3]

Both methods run the same N `fal-ai/flux/schnell` requests against a fresh fal sandbox (in a
process of its own, `orchestrator sandbox fal`) whose generation latency is uniform in --latency
seconds, with at most --limit requests in flight. The ideal completion time is
N x mean latency / limit; slot utilisation is ideal / wall. With --repeat R each method runs R
times (alternating) and the tables show the median of each figure.

- orchestrator, as deployed: POST /v1/batches to `orchestrator api` (gunicorn, 2 x 8 threads),
  --workers `orchestrator worker` processes x --worker-concurrency threads, one `orchestrator
  beat`, ORCH_FAL_MAX_IN_FLIGHT=limit; jobs are submitted with webhooks, every callback is
  reconciled, every image downloaded, verified and stored; wall time runs from the POST to the
  batch's final state.
- fal-client: a plain script (a child process) with `fal_client.SyncClient` and a
  ThreadPoolExecutor(limit): each thread submits, waits with `handle.get()` (polling every
  0.1 s), fetches the result, downloads every image and sha256-hashes it. It keeps no state and
  survives no crash.

Per job, the orchestrator's round trips: SQL statements counted at the driver in each process
(executes incl. pool pings, implicit BEGINs, COMMITs, ROLLBACKs; see bench/_hooks), commits from
pg_stat_database, broker messages (LPUSH) and all Redis commands from INFO commandstats.

CPU seconds are those of the orchestrator's processes (API + workers) or of the baseline script,
counted from just before the first request to the end (start-up excluded); the sandbox's CPU is
never counted. The orchestrator's per-job timeline shows where the slot time goes.

The completion -> stored table is issue 13's hot-path figure in this topology: per job, from the
sandbox starting the job's first webhook (the generation has finished) to assets.stored_at, split
at the sandbox seeing the receiver's 2xx and at deliveries.processed_at; each run's p50 and p99,
and their median over the runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common
import httpx

from orchestrator.sandbox import FAL_DEV_KEY

MODEL = "fal-ai/flux/schnell"
# The same request both ways: fal's native fields for fal-client, the orchestrator's common ones.
ARGUMENTS: dict[str, Any] = {"image_size": "square", "num_inference_steps": 4, "output_format": "jpeg"}
ITEM_FIELDS: dict[str, Any] = {"image_size": "square", "steps": 4, "output_format": "jpeg"}


@dataclass(frozen=True)
class Options:
    """The command line."""

    jobs: int
    latency: tuple[float, float]
    limit: int
    workers: int
    worker_concurrency: int
    fal_concurrency: int
    api_workers: int
    api_threads: int
    redis_url: str
    beat: bool = True
    repeat: int = 1

    @property
    def ideal(self) -> float:
        """Seconds the jobs take with every slot busy all the time."""
        return self.jobs * (sum(self.latency) / 2) / self.limit


@dataclass(frozen=True)
class Run:
    """One method's measurements."""

    method: str
    jobs_ok: int
    wall: float
    cpu: float
    peak_inflight: int
    submissions: int  # requests the sandbox accepted (one per job unless something resent)
    machine_busy: float  # % of all cores busy on the machine over the run
    sandbox_busy: float | None = None  # mean requests running at the sandbox over the run


def prompt(i: int) -> str:
    """The i-th prompt (distinct per job)."""
    return f"a lighthouse at dusk, study {i}"


# --- the baseline: the official client, in a child process ---------------------------------

def baseline_child(url: str, jobs: int, threads: int) -> None:
    """Run the plain fal-client script and print {"wall", "cpu", "ok"} as JSON (child process)."""
    import fal_client
    import fal_client.client

    fal_client.client.QUEUE_URL_FORMAT = url.rstrip("/") + "/"  # see providers/fal.md (f)
    client = fal_client.SyncClient(key=FAL_DEV_KEY)

    http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=threads))

    def one(i: int) -> bool:
        handle = client.submit(MODEL, {**ARGUMENTS, "prompt": prompt(i)})
        result = handle.get()
        images = result.get("images") or []
        for image in images:  # what a user's script does next: fetch and fingerprint each image
            resp = http.get(image["url"])
            resp.raise_for_status()
            hashlib.sha256(resp.content).hexdigest()
        return bool(images)

    cpu0, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ok = sum(pool.map(one, range(jobs)))
    print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu0, "ok": ok}))


def run_baseline(opts: Options, tmp: Path) -> Run:
    """The baseline script against its own sandbox."""
    with common.fal_sandbox_process(opts.latency, max(opts.fal_concurrency, opts.limit), tmp) as sandbox:
        common.note(f"fal-client: {opts.jobs} jobs, {opts.limit} threads")
        machine0 = common.machine_cpu()  # includes the child's start-up (imports), well under a second
        out = subprocess.run([sys.executable, __file__, "--baseline-child", sandbox.url, str(opts.jobs),
                              str(opts.limit)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"baseline failed:\n{out.stderr[-3000:]}")
        busy = common.busy_percent(machine0, common.machine_cpu())
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ledger = sandbox.ledger
        return Run("fal-client threads", result["ok"], result["wall"], result["cpu"], ledger.peak_inflight(),
                   len(common.accepted(ledger)), busy)


# --- the orchestrator ----------------------------------------------------------------------

def run_orchestrator(opts: Options, db_url: str, tmp: Path) -> tuple[Run, common.BatchRun, dict[str, common.Timeline]]:
    """The orchestrator against its own sandbox; returns the row, the raw run and per-job timelines."""
    items = [{"custom_id": f"j{i}", "model": MODEL, "prompt": prompt(i), **ITEM_FIELDS} for i in range(opts.jobs)]
    topo = common.Topology(opts.limit, opts.workers, opts.worker_concurrency, opts.api_workers, opts.api_threads,
                           beat=opts.beat)
    with common.fal_sandbox_process(opts.latency, max(opts.fal_concurrency, opts.limit), tmp) as sandbox:
        common.note(f"orchestrator: {opts.jobs} jobs, limit {opts.limit}, {opts.workers} worker(s) "
                    f"x {opts.worker_concurrency}{' + beat' if opts.beat else ''}")
        result = common.run_batch(db_url, opts.redis_url, tmp, sandbox, items, topo, timeout=opts.ideal * 5 + 120)
        ledger = sandbox.ledger
        lines = common.timelines(db_url, ledger)
        busy = sum(common.spans(lines, "submitted", "completed")) / result.wall
        run = Run("orchestrator", result.batch["counts"]["succeeded"], result.wall, sum(result.cpu.values()),
                  ledger.peak_inflight(), len(common.accepted(ledger)), result.machine_busy, busy)
    return run, result, lines


# --- reporting -----------------------------------------------------------------------------

def median_run(runs: list[Run]) -> Run:
    """Each figure's median over repeated runs of one method."""
    med = statistics.median
    first = runs[0]
    busy = [r.sandbox_busy for r in runs if r.sandbox_busy is not None]
    return Run(first.method, int(med(r.jobs_ok for r in runs)), med(r.wall for r in runs), med(r.cpu for r in runs),
               max(r.peak_inflight for r in runs), int(med(r.submissions for r in runs)),
               med(r.machine_busy for r in runs), med(busy) if busy else None)


def print_results(opts: Options, runs: list[Run]) -> None:
    """The comparison table (medians when repeated) and the ratios against the baseline."""
    lo, hi = opts.latency
    print(f"\n{opts.jobs} jobs of {MODEL}, latency uniform {lo:g}-{hi:g} s (mean {(lo + hi) / 2:g}), "
          f"in-flight limit {opts.limit}; ideal = jobs x mean latency / limit = {opts.ideal:.1f} s"
          + (f"; median of {opts.repeat} runs (peak in-flight: the highest)" if opts.repeat > 1 else ""))
    headers = ["method", "jobs ok", "submits", "wall s", "ideal s", "utilisation %", "CPU s/1k jobs",
               "jobs/s", "peak in-flight", "mean busy slots", "machine CPU %"]
    rows = [[r.method, f"{r.jobs_ok}/{opts.jobs}", r.submissions, r.wall, opts.ideal, 100 * opts.ideal / r.wall,
             1000 * r.cpu / opts.jobs, opts.jobs / r.wall, f"{r.peak_inflight}/{opts.limit}",
             r.sandbox_busy if r.sandbox_busy is not None else "-", r.machine_busy]
            for r in runs]
    common.print_table(headers, rows)
    by = {r.method: r for r in runs}
    orch, base = by["orchestrator"], by["fal-client threads"]
    print(f"\norchestrator / fal-client: utilisation {base.wall / orch.wall:.2f}x, throughput "
          f"{base.wall / orch.wall:.2f}x, CPU {orch.cpu / base.cpu:.2f}x; peak in-flight "
          f"{orch.peak_inflight} <= limit {opts.limit}: {'yes' if orch.peak_inflight <= opts.limit else 'NO'}")
    print("The fal-client baseline downloads and hashes every image but neither verifies nor stores it, keeps\n"
          "no state and survives no crash; the orchestrator records every transition durably.")


IO_ROWS = [("SQL statements (driver: executes + BEGIN + COMMIT/ROLLBACK)", "sql_statements"),
           ("  executes (incl. pool pings)", "sql_execute"), ("  BEGIN", "sql_begin"), ("  COMMIT", "sql_commit"),
           ("  ROLLBACK", "sql_rollback"), ("connections opened", "sql_connect"),
           ("commits (pg_stat_database)", "pg_xact_commit"), ("rows inserted", "pg_tup_inserted"),
           ("rows updated", "pg_tup_updated"), ("rows returned (scans)", "pg_tup_returned"),
           ("broker messages (Redis LPUSH)", "broker_messages"), ("Redis commands", "redis_commands")]


def print_io(opts: Options, ios: list[dict[str, float]]) -> None:
    """Per-job round trips of the orchestrator (medians when repeated)."""
    print(f"\nOrchestrator round trips per job ({opts.jobs} jobs" + (f", median of {len(ios)} runs)" if len(ios) > 1
                                                                     else ")"))
    rows = []
    for label, key in IO_ROWS:
        values = [io.get(key, 0.0) for io in ios]
        rows.append([label, statistics.median(values) / opts.jobs, statistics.median(values)])
    common.print_table(["per job", "count/job", "total"], rows)
    last = ios[-1]
    tables = sorted({k[len("table_"):-len("_seq_scan")] for k in last if k.startswith("table_")
                     and k.endswith("_seq_scan")})
    rows = [[t, last.get(f"table_{t}_seq_scan", 0) / opts.jobs, last.get(f"table_{t}_seq_tup_read", 0) / opts.jobs,
             last.get(f"table_{t}_idx_scan", 0) / opts.jobs, last.get(f"table_{t}_idx_tup_fetch", 0) / opts.jobs]
            for t in tables]
    print("\nScans per job by table (last run)")
    common.print_table(["table", "seq scans", "rows seq-read", "index scans", "rows index-fetched"], rows)


def print_timeline(result: common.BatchRun, lines: dict[str, common.Timeline]) -> None:
    """Where a slot's time goes in the orchestrator, per job (p50 / p99 / mean, seconds)."""
    print("\nOrchestrator per-job timeline (seconds)")
    steps = [("provider running (submit -> completed)", "submitted", "completed"),
             ("webhook to receiver (completed -> received)", "completed", "received"),
             ("reconcile (received -> processed)", "received", "processed"),
             ("slot held after completion (completed -> processed)", "completed", "processed"),
             ("store (processed -> stored)", "processed", "stored")]
    rows = []
    for label, start, end in steps:
        values = common.spans(lines, start, end)
        rows.append([label, len(values), common.percentile(values, 50), common.percentile(values, 99),
                     statistics.fmean(values) if values else float("nan")])
    common.print_table(["step", "jobs", "p50", "p99", "mean"], rows)
    submits = [t.submitted for t in lines.values() if t.submitted is not None]
    completions = [t.completed for t in lines.values() if t.completed is not None]
    stores = [t.stored for t in lines.values() if t.stored is not None]
    if submits and completions and stores:
        print(f"POST -> first submit {min(submits) - result.started:.2f} s; POST -> last submit "
              f"{max(submits) - result.started:.1f} s; last completion -> last store "
              f"{max(stores) - max(completions):.2f} s")


# Issue 13's hot-path target, per job: provider completion -> image stored, p50 < 150 ms, p99 < 500 ms.
LATENCY_STEPS = [("provider completed -> image stored", "completed", "stored"),
                 ("  completed -> webhook answered (verified, stored, queued, 2xx)", "completed", "answered"),
                 ("  answered -> delivery processed (queued, reconciled)", "answered", "processed"),
                 ("  processed -> image stored (download, verify, upload)", "processed", "stored")]


def latency_figures(lines: dict[str, common.Timeline]) -> dict[str, tuple[int, float, float]]:
    """Per step of LATENCY_STEPS: (jobs, p50 ms, p99 ms) of one run."""
    out = {}
    for label, start, end in LATENCY_STEPS:
        ms = [v * 1000 for v in common.spans(lines, start, end)]
        out[label] = (len(ms), common.percentile(ms, 50), common.percentile(ms, 99))
    return out


def print_latency(figures: list[dict[str, tuple[int, float, float]]]) -> None:
    """Completion -> stored and its steps: the median over the runs of each run's p50 and p99."""
    print(f"\nProvider completion -> image stored, per job (ms; target p50 < 150, p99 < 500); median of "
          f"{len(figures)} run(s)' p50 and p99. Completion: the sandbox starting its first webhook; answered: "
          "its 2xx back at the sandbox; a worker may process the delivery before the 2xx arrives (negative "
          "step)")
    rows = []
    for label, _, _ in LATENCY_STEPS:
        per = [f[label] for f in figures]
        rows.append([label, int(statistics.median(p[0] for p in per)), statistics.median(p[1] for p in per),
                     statistics.median(p[2] for p in per), " / ".join(f"{p[1]:.0f}" for p in per),
                     " / ".join(f"{p[2]:.0f}" for p in per)])
    common.print_table(["step", "jobs", "p50 ms", "p99 ms", "p50 per run", "p99 per run"], rows)


def parse_args(argv: list[str] | None) -> Options:
    """Options from the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per method (default 1000)")
    parser.add_argument("--latency", default="0.2,0.6", help="sandbox latency range in seconds, MIN,MAX "
                                                             "(default 0.2,0.6)")
    parser.add_argument("--limit", type=int, default=16, help="in-flight limit (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="orchestrator worker processes (default 2)")
    parser.add_argument("--worker-concurrency", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--fal-concurrency", type=int, default=64,
                        help="sandbox concurrency; above the limit so the peak shows whether the limit held")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers of the API (default 2)")
    parser.add_argument("--api-threads", type=int, default=8, help="threads per API worker (default 8)")
    parser.add_argument("--no-beat", action="store_true", help="run no `orchestrator beat` (sweep)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; tables show medians (default 1)")
    parser.add_argument("--redis-url", default=common.REDIS_URL, help="Redis database to use (flushed!)")
    args = parser.parse_args(argv)
    lo, hi = (float(v) for v in args.latency.split(","))
    return Options(args.jobs, (lo, hi), args.limit, args.workers, args.worker_concurrency, args.fal_concurrency,
                   args.api_workers, args.api_threads, args.redis_url, not args.no_beat, max(1, args.repeat))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--baseline-child"]:
        baseline_child(argv[1], int(argv[2]), int(argv[3]))
        return
    opts = parse_args(argv)
    bases: list[Run] = []
    orchs: list[Run] = []
    ios: list[dict[str, float]] = []
    latencies: list[dict[str, tuple[int, float, float]]] = []
    last: tuple[common.BatchRun, dict[str, common.Timeline]] | None = None
    for i in range(opts.repeat):
        common.note(f"round {i + 1} of {opts.repeat}")
        with tempfile.TemporaryDirectory() as tmp:
            bases.append(run_baseline(opts, Path(tmp)))
        with common.scratch_database() as db_url, tempfile.TemporaryDirectory() as tmp:
            orch, result, lines = run_orchestrator(opts, db_url, Path(tmp))
        orchs.append(orch)
        ios.append(result.io or {})
        latencies.append(latency_figures(lines))
        last = (result, lines)
    assert last is not None
    result, lines = last
    print_results(opts, [median_run(orchs), median_run(bases)])
    print("per run (orchestrator): " + ", ".join(f"{r.wall:.1f} s / {r.cpu:.1f} CPU s" for r in orchs)
          + "; (fal-client): " + ", ".join(f"{r.wall:.1f} s / {r.cpu:.1f} CPU s" for r in bases))
    print_io(opts, ios)
    print("orchestrator CPU s by process (last run): " + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu.items()))
    print_timeline(result, lines)
    print_latency(latencies)
    common.print_task_table(result, opts.workers * opts.worker_concurrency)
    if result.problems:
        print(f"\n{len(result.problems)} error line(s) in the orchestrator's logs, first ones:")
        print("\n".join(result.problems[:10]))


if __name__ == "__main__":
    main()
