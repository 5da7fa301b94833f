"""Memory benchmark: peak RSS of the orchestrator's processes over a 1,000- and a 100,000-job batch.

    python bench/memory.py [--sizes 1000,100000] [--e2e-jobs 1000] [--workers 2] [--tracemalloc]

Running 100,000 jobs through a sandbox would take hours on this machine, so each size exercises,
in bounded time, every step whose work could grow with the batch:

1. intake: the whole batch is POSTed through `orchestrator api` (gunicorn, as deployed);
2. the batch's jobs past the first --e2e-jobs are moved to `succeeded` directly in SQL, each with
   one stored asset row, and the batch counters with them (before any worker runs, so no worker
   ever sees them queued);
3. then --workers `orchestrator worker` processes and one `orchestrator beat` start, the first
   --e2e-jobs jobs run end to end through the fal sandbox (its own process, small latency):
   submit, webhook, reconcile, download, verify, store;
4. the last of them completes the full batch: its completion, the signed batch.completed callback
   (to a receiver in this process), the JSONL manifest of every job (GET /results, counted) and
   at least --sweeps sweeps after the completion (ORCH_SWEEP_INTERVAL_SECONDS=1) all run on the
   full batch.

Each process group's resident set (VmRSS summed over the group: gunicorn's master and workers
together) is sampled from /proc every 0.1 s from its start to the end; the table shows the RSS
once started (idle) and the peak per size, and the ratio of the peaks. With --tracemalloc the
orchestrator processes trace their allocations (bench/_hooks/bench_tracemalloc.py) and the top
growth sites of each are printed: slower, for finding a leak only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import _common as common
import httpx
import sqlalchemy as sa

from orchestrator.db import make_engine
from orchestrator.models import FINAL_BATCH

MODEL = "fal-ai/flux/schnell"
_SWEEP_DONE = "Task workers.maintenance.sweep["


@dataclass(frozen=True)
class Options:
    """The command line."""

    sizes: tuple[int, ...]
    e2e_jobs: int
    workers: int
    worker_concurrency: int
    limit: int
    latency: tuple[float, float]
    sweeps: int
    tracemalloc: bool
    redis_url: str


@dataclass
class SizeRun:
    """One batch size's figures."""

    size: int
    idle: dict[str, float]  # MiB once the process group was ready
    peak: dict[str, float]  # MiB, highest sample over the run
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    growth: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # (phase, process) ->
    # (MiB as the phase began, MiB peak within it)
    manifest_lines: int = 0
    batch: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, str] = field(default_factory=dict)


# --- sampling ------------------------------------------------------------------------------

class RssSampler:
    """A thread that keeps each watched process group's highest RSS."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.procs: list[common.Proc] = []
        self.peak: dict[str, int] = {}
        self.idle: dict[str, int] = {}
        self.phase = "start"
        self.phase_peak: dict[tuple[str, str], int] = {}  # (phase, process) -> highest sample in it
        self.phase_start: dict[tuple[str, str], int] = {}  # (phase, process) -> RSS as it began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, proc: common.Proc) -> None:
        """Sample `proc` from now on; its current RSS is its idle figure."""
        self.idle[proc.name] = common.group_rss(proc.popen.pid)
        self.procs.append(proc)

    def mark(self, phase: str) -> None:
        """Attribute the samples from now on to `phase`, noting each process's RSS as it begins."""
        for proc in self.procs:
            self.phase_start[(phase, proc.name)] = common.group_rss(proc.popen.pid)
        self.phase = phase

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for proc in list(self.procs):
                rss, key = common.group_rss(proc.popen.pid), (self.phase, proc.name)
                self.peak[proc.name] = max(self.peak.get(proc.name, 0), rss)
                self.phase_peak[key] = max(self.phase_peak.get(key, 0), rss)
                self.phase_start.setdefault(key, self.idle[proc.name])  # started within the phase


# --- the client callback -------------------------------------------------------------------

class CallbackReceiver:
    """A loopback endpoint that accepts batch.completed events and keeps their types."""

    def __init__(self) -> None:
        self.events: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.events.append(json.loads(body).get("type", "?"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", common.free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    @contextmanager
    def running(self) -> Iterator[CallbackReceiver]:
        """Serve in a thread until the block ends."""
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


# --- one size ------------------------------------------------------------------------------

def post_batch(client: httpx.Client, size: int, callback_url: str) -> str:
    """POST the whole batch through the API; returns its id."""
    items = [{"custom_id": f"m{i}", "model": MODEL, "prompt": f"a paper boat on a pond, study {i}",
              "image_size": "square", "steps": 4, "output_format": "jpeg"} for i in range(size)]
    resp = client.post("/v1/batches", json={"name": f"memory {size}", "callback_url": callback_url, "items": items},
                       timeout=600)
    if resp.status_code != 201:
        raise SystemExit(f"POST /v1/batches answered {resp.status_code}: {resp.text[:500]}")
    return str(resp.json()["id"])


def settle_in_sql(db_url: str, batch_id: str, keep: int) -> int:
    """Every job at position >= `keep` succeeded with one stored asset; the counters moved with them."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        moved = conn.execute(sa.text("""
            WITH moved AS (
                UPDATE jobs SET state = 'succeeded', attempt = 1, completed_at = now(), updated_at = now(),
                                cost = 0.003, cost_source = 'priced'
                WHERE batch_id = :b AND position >= :k RETURNING id)
            INSERT INTO assets (id, job_id, index, storage_key, content_type, width, height, bytes, sha256,
                                seed, nsfw, cost, cost_source, created_at, stored_at)
            SELECT gen_random_uuid(), id, 0, 'bench/' || id || '.jpg', 'image/jpeg', 512, 512, 20000,
                   repeat('0', 64), '7', false, 0.003, 'priced', now(), now() FROM moved"""),
            {"b": batch_id, "k": keep}).rowcount
        conn.execute(sa.text("UPDATE batches SET count_queued = count_queued - :m, "
                             "count_succeeded = count_succeeded + :m, cost = cost + 0.003 * :m WHERE id = :b"),
                     {"b": batch_id, "m": moved})
    engine.dispose()
    return moved


def sweeps_done(procs: list[common.Proc]) -> int:
    """Sweeps the workers have finished so far (Celery logs each task at INFO)."""
    return sum(p.log.read_text(errors="replace").count(_SWEEP_DONE) for p in procs if p.log.exists())


def count_manifest(client: httpx.Client, batch_id: str) -> int:
    """Lines of the batch's JSONL manifest, streamed."""
    lines = 0
    with client.stream("GET", f"/v1/batches/{batch_id}/results", timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            lines += bool(line.strip())
    return lines


def run_size(opts: Options, size: int, tmp: Path) -> SizeRun:
    """One batch of `size` jobs, sampled from the API's start to the last sweep."""
    common.flush_redis(opts.redis_url)
    with common.scratch_database() as db_url, \
            common.fal_sandbox_process(opts.latency, 64, tmp) as sandbox, \
            CallbackReceiver().running() as hook, RssSampler() as sampler:
        port = common.free_port()
        api_url = f"http://127.0.0.1:{port}"
        extra = {**common.fal_env(sandbox, opts.limit), "ORCH_CALLBACK_ALLOW_PRIVATE": "true",
                 "ORCH_SWEEP_INTERVAL_SECONDS": "1"}
        env = common.orchestrator_env(db_url, opts.redis_url, tmp, api_url, extra)
        if opts.tracemalloc:
            (tmp / "traces").mkdir(exist_ok=True)
            env.update(BENCH_TRACEMALLOC_DIR=str(tmp / "traces"),
                       PYTHONPATH=os.pathsep.join(p for p in (str(common.HOOKS_DIR), env.get("PYTHONPATH")) if p))
        procs = [common.start_api(env, port, tmp, 2, 8)]
        try:
            sampler.watch(procs[0])
            run = SizeRun(size, {}, {})
            token = common.create_api_key(db_url)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=api_url, headers=headers, timeout=60) as client:
                sampler.mark("intake")
                t0 = time.perf_counter()
                batch_id = post_batch(client, size, hook.url)
                t1 = time.perf_counter()
                settle_in_sql(db_url, batch_id, opts.e2e_jobs)
                t2 = time.perf_counter()  # end to end counts from here: the workers' start-up included
                run.phases.update(intake=t1 - t0, settle_sql=t2 - t1)
                common.note(f"{size}: posted in {t1 - t0:.1f} s, settled in SQL in {t2 - t1:.1f} s")
                sampler.mark("end to end")
                for i in range(opts.workers):
                    procs.append(common.start_worker(env, f"worker{i + 1}", opts.worker_concurrency, tmp))
                    sampler.watch(procs[-1])
                procs.append(common.start_beat(env, tmp))
                sampler.watch(procs[-1])
                run.batch = wait_final(client, batch_id, procs, timeout=600)
                t4 = time.perf_counter()
                common.wait_until(lambda: bool(hook.events), 120, "the batch.completed callback")
                swept = sweeps_done(procs[1:])
                sampler.mark("manifest")
                run.manifest_lines = count_manifest(client, batch_id)
                t5 = time.perf_counter()
                sampler.mark("sweeps")
                common.wait_until(lambda: sweeps_done(procs[1:]) >= swept + opts.sweeps, 120, "the sweeps")
                run.phases.update(end_to_end=t4 - t2, manifest=t5 - t4)
            time.sleep(0.3)  # a last sample or three
        finally:
            for proc in procs:
                proc.stop()
        problems = [f"{p.name}: {line}" for p in procs for line in p.log_problems()]
    mib = 2 ** 20
    run.idle = {k: v / mib for k, v in sampler.idle.items()}
    run.peak = {k: v / mib for k, v in sampler.peak.items()}
    run.growth = {k: (sampler.phase_start[k] / mib, v / mib) for k, v in sampler.phase_peak.items()}
    if opts.tracemalloc:
        run.traces = {p.name: p.read_text() for p in sorted((tmp / "traces").glob("*.txt"))}
    for line in problems[:10]:
        common.note(f"log: {line}")
    return run


def wait_final(client: httpx.Client, batch_id: str, procs: list[common.Proc], timeout: float) -> dict[str, Any]:
    """Poll the batch until it is final."""
    deadline = time.monotonic() + timeout
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["state"] in FINAL_BATCH:
            return batch
        time.sleep(0.2)
    raise SystemExit(f"batch not final after {timeout:.0f} s: {batch}\n" + "\n".join(p.tail() for p in procs))


# --- reporting -----------------------------------------------------------------------------

def print_results(opts: Options, runs: list[SizeRun], load: float) -> None:
    """Peak RSS per process and size, and the ratio of the largest size to the smallest."""
    lo, hi = opts.latency
    print(f"\nPeak RSS (MiB, whole process group) per batch size; {min(opts.e2e_jobs, min(opts.sizes))} jobs end "
          f"to end through the fal sandbox (latency {lo:g}-{hi:g} s, limit {opts.limit}), the rest settled in SQL; "
          f"{opts.workers} worker(s) x {opts.worker_concurrency} threads + beat; load average before: {load:.2f}, "
          f"after: {os.getloadavg()[0]:.2f}")
    first, last = runs[0], runs[-1]
    headers = ["process", *(f"idle {r.size:,}" for r in runs), *(f"peak {r.size:,}" for r in runs),
               f"peak {last.size:,} / {first.size:,}"]
    rows = [[name, *(r.idle.get(name, float("nan")) for r in runs), *(r.peak.get(name, float("nan")) for r in runs),
             last.peak.get(name, float("nan")) / first.peak.get(name, float("nan"))] for name in first.peak]
    common.print_table(headers, rows)
    print("\nPer phase: MiB as it began -> peak within it (intake: POST; end to end: workers' start to the "
          "final batch, callback included; manifest: GET /results; sweeps: the last sweeps)")
    keys = list(dict.fromkeys(k for r in runs for k in r.growth))
    common.print_table(["phase", "process", *(f"{r.size:,}" for r in runs)],
                       [[phase, name, *(_growth(r.growth.get((phase, name))) for r in runs)] for phase, name in keys])
    print("\nPhases (seconds) and checks")
    phase_names = list(first.phases)
    common.print_table(["size", *phase_names, "manifest lines", "batch state", "succeeded"],
                       [[f"{r.size:,}", *(r.phases.get(p, float("nan")) for p in phase_names), r.manifest_lines,
                         r.batch.get("state"), r.batch.get("counts", {}).get("succeeded")] for r in runs])
    for r in runs:
        for name, text in r.traces.items():
            print(f"\n--- tracemalloc {r.size:,} jobs, pid {name}\n{text[:6000]}")


def _growth(pair: tuple[float, float] | None) -> str:
    return f"{pair[0]:.0f} -> {pair[1]:.0f}" if pair else "-"


def parse_args(argv: list[str] | None) -> Options:
    """Options from the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="batch sizes, comma-separated (default 1000,100000)")
    parser.add_argument("--e2e-jobs", type=int, default=1000, help="jobs run through the sandbox per size "
                                                                   "(default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="orchestrator worker processes (default 2)")
    parser.add_argument("--worker-concurrency", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--limit", type=int, default=32, help="fal in-flight limit (default 32)")
    parser.add_argument("--latency", default="0.02,0.05", help="sandbox latency MIN,MAX s (default 0.02,0.05)")
    parser.add_argument("--sweeps", type=int, default=2, help="sweeps to wait for after completion (default 2)")
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations in the orchestrator's "
                                                                   "processes and print the top growth sites")
    parser.add_argument("--redis-url", default=common.REDIS_URL, help="Redis database to use (flushed!)")
    args = parser.parse_args(argv)
    lo, hi = (float(v) for v in args.latency.split(","))
    sizes = tuple(sorted(int(v) for v in args.sizes.split(",")))
    return Options(sizes, args.e2e_jobs, args.workers, args.worker_concurrency, args.limit, (lo, hi), args.sweeps,
                   args.tracemalloc, args.redis_url)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    opts = parse_args(argv)
    runs, load = [], os.getloadavg()[0]
    for size in opts.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_size(opts, size, Path(tmp)))
    print_results(opts, runs, load)


if __name__ == "__main__":
    main()
