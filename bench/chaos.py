"""Chaos harness: attack every "nothing lost, nothing paid twice" property at once and count the damage.

    python bench/chaos.py                 # 3 runs x 1,000 jobs, different seeds
    python bench/chaos.py --runs 10       # a release
    python bench/chaos.py --jobs 120 --runs 1 --batch-size 30   # the short version (tests/e2e/test_chaos.py)

Each run starts its own Postgres cluster and Redis (so it may crash them), both provider sandboxes
as `orchestrator sandbox fal|runware` processes with every fault switched on, the API, three
workers and beat as `orchestrator` processes, and a loopback receiver for the batches' completion
callbacks. It submits batches mixing fal and Runware models (some jobs with several images),
kills a random worker with SIGKILL every few seconds, kills and restarts the API and beat,
restarts Redis, crashes Postgres (`pg_ctl stop -m immediate`) and starts it again, then audits
the result from the database, the API, the sandboxes' ledgers and the storage directory
(bench/_chaos_audit.py). It prints one table and exits 1 if anything was lost, paid twice,
duplicated or mismatched, if a batch completed twice, or if a fault was never injected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from _chaos_audit import Audit, audit, injected
from _chaos_infra import Postgres, Redis, Service
from _common import create_api_key, http_ok, note, print_table

from orchestrator.migrate import upgrade
from orchestrator.models import Batch, Job, JobEvent, JobState
from orchestrator.netutil import free_port
from orchestrator.sandbox import sandbox_env
from orchestrator.state import TERMINAL

PY = sys.executable
# (model, images per job, weight). The two "expiring" models have their media expire at once
# (the sandboxes' media_ttl=0 for them), so their jobs must fail cleanly as result_expired.
MODELS = [("fal-ai/flux/schnell", 1, 30), ("fal-ai/flux/dev", 2, 12), ("fal-ai/flux/schnell", 3, 6),
          ("runware:100@1", 1, 30), ("runware:101@1", 2, 12), ("runware:100@1", 3, 6)]
EXPIRING = [("rundiffusion-fal/juggernaut-flux/lightning", 1, 0), ("rundiffusion:130@100", 1, 0)]
SANDBOX_FAULTS = [
    "--webhook-duplicate-rate", "0.2", "--webhook-drop-rate", "0.1", "--webhook-reorder-window", "0.3",
    "--webhook-delay-rate", "0.1", "--webhook-delay-seconds", "8", "--submit-429-rate", "0.1", "--retry-after", "1",
    "--submit-500-rate", "0.03", "--submit-503-rate", "0.02", "--submit-timeout-rate", "0.05",
    "--fault", "submit_timeout_accepts=true", "--fault", "submit_timeout_seconds=3",
    "--submit-slow-rate", "0.05", "--submit-slow-seconds", "1", "--latency-min", "0.2", "--latency-max", "1.0",
    "--webhook-backoff", "0.5",
]
# A short run (tests/e2e/test_chaos.py: 60 jobs, about 70 submits) doubles the rarest submit faults:
# at 5 % each, one of them is never injected in about 3 % of short runs (0.95^70), which would
# fail "every fault happened" by chance; doubled, about 0.06 %.
SHORT_RUN_FAULTS = ["--submit-500-rate", "0.06", "--submit-503-rate", "0.04", "--submit-timeout-rate", "0.1"]
SHORT_RUN_JOBS = 200
ORCH_ENV = {
    "ORCH_POLL_AFTER_SECONDS": "6", "ORCH_POLL_INTERVAL_SECONDS": "3", "ORCH_CLAIM_STALE_SECONDS": "8",
    "ORCH_STORING_STALE_SECONDS": "15", "ORCH_SWEEP_INTERVAL_SECONDS": "2", "ORCH_RETRY_BASE_SECONDS": "0.5",
    "ORCH_RETRY_MAX_SECONDS": "5",
    # Shorter than a delayed webhook (8 s): "resubmit" batches resubmit before some first results
    # arrive, so the harness exercises adopting an earlier attempt's result.
    "ORCH_CALLBACK_TIMEOUT_SECONDS": "6", "ORCH_BREAKER_COOLDOWN_SECONDS": "2",
    "ORCH_FAL_MAX_IN_FLIGHT": "24", "ORCH_FAL_RATE_PER_SECOND": "100", "ORCH_RUNWARE_MAX_IN_FLIGHT": "24",
    "ORCH_RUNWARE_RATE_PER_SECOND": "100",
}
# Process faults at these shares of jobs final (each at least once per run); worker kills run throughout.
# "submit" kills every worker the moment a submit is in flight (intent committed, no answer yet),
# early, while batches still arrive: random kills alone land between submits more often than not
# once the hot path is quick, and later in a run few submits are left.
PLAN = [(0.0, "submit"), (0.10, "api"), (0.20, "beat"), (0.35, "redis"), (0.50, "postgres"), (0.65, "api")]


@dataclass(frozen=True)
class Params:
    jobs: int = 1000
    batch_size: int = 100
    seed: int = 1
    workers: int = 3
    concurrency: int = 4
    kill_every: float = 4.0
    timeout: float = 1500.0
    keep: bool = False
    window: float = 40.0  # ORCH_UNKNOWN_OUTCOME_WINDOW_SECONDS: how long "wait" batches wait for fal


@dataclass
class RunResult:
    seed: int
    seconds: float
    audit: Audit
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> list[str]:
        a, out = self.audit, []
        for name, value in (("jobs lost or stuck", a.not_final), ("batches not final", a.batches_not_final),
                            ("paid twice", a.paid_twice), ("paid results discarded", a.results_discarded),
                            ("duplicate assets", a.duplicate_assets),
                            ("incomplete succeeded jobs", a.incomplete_jobs), ("sha256 mismatches", a.sha_mismatches),
                            ("orphan objects", a.orphan_objects), ("counter mismatches", a.counter_mismatches),
                            ("manifest mismatches", a.manifest_mismatches), ("missing callbacks", a.missing_callbacks),
                            ("double completions", a.double_completions)):
            if value:
                out.append(f"{name}: {value}")
        out += [f"fault never injected: {name}" for name in FAULT_ROWS if not self.faults.get(name)]
        return out


FAULT_ROWS = ["webhook duplicated", "webhook dropped", "webhook delayed", "webhook reordered (window)",
              "submit 429 (Retry-After)", "submit 5xx", "submit accepted, answer lost", "media expired",
              "worker kill -9", "submit interrupted by kill", "API kill + restart", "beat kill + restart",
              "Redis restart", "Postgres stop -m immediate + start"]


class CallbackReceiver:
    """The client's loopback endpoint for batch.completed events."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/completed"

    def close(self) -> None:
        self._server.shutdown()


def workload(p: Params, rng: random.Random) -> list[dict[str, Any]]:
    """Batch bodies: mixed models and image counts, alternating lanes and unknown-outcome policies."""
    choices = MODELS
    weights = [w for _, _, w in choices]
    bodies, n = [], 0
    for b in range(max(1, -(-p.jobs // p.batch_size))):
        items = []
        for _ in range(min(p.batch_size, p.jobs - n)):
            # Every run has jobs whose media expire on both providers, at least one each per 50 jobs.
            forced = {7: EXPIRING[0], 32: EXPIRING[1]}.get(n % 50)
            model, images, _ = forced or rng.choices(choices, weights)[0]
            items.append({"custom_id": f"j{n}", "model": model, "prompt": f"chaos {n}", "width": 128, "height": 128,
                          "num_images": images, "seed": n + 1})
            n += 1
        bodies.append({"name": f"chaos-{b}", "lane": "bulk" if b % 2 else "interactive", "items": items,
                       "unknown_outcome": "resubmit" if b % 2 else "wait"})
    return bodies


class Run:
    """One run: its infrastructure, its processes and its fault driver."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.rng = random.Random(p.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="orch-chaos-"))
        os.chmod(self.tmp, 0o755)  # noqa: S103  (the postgres user must reach its data directory below)
        self.services: list[Service] = []
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.pg = Postgres(self.tmp / "pg")
        self.redis = Redis(self.tmp)
        self.faults: Counter[str] = Counter()
        self.receiver = CallbackReceiver()
        self.batch_ids: list[str] = []
        self.submit_error: str | None = None

    # -- setup ----------------------------------------------------------------------------------

    def start(self) -> None:
        note(f"[seed {self.p.seed}] private Postgres and Redis in {self.tmp}")
        self.pg.init()
        upgrade(self.pg.url)
        self.redis.start()
        self.fal = self._sandbox("fal", ["--concurrency", "48", "--fault",
                                         'models={"rundiffusion-fal/juggernaut-flux/lightning": {"media_ttl": 0}}'])
        self.runware = self._sandbox("runware", ["--fault", 'models={"rundiffusion:130@100": {"media_ttl": 0}}'])
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        fal_url, rw_url = self.fal_url, self.rw_url
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update({
            "ORCH_DATABASE_URL": self.pg.url, "ORCH_BROKER_URL": self.redis.url,
            "ORCH_DATA_DIR": str(self.tmp / "data"),
            "ORCH_STORAGE_URL": (self.tmp / "storage").as_uri(), "ORCH_PUBLIC_URL": self.api_url,
            "ORCH_API_URL": self.api_url, "ORCH_SECRET_KEY": "chaos-secret-key-0123456789",
            **sandbox_env(fal_url, rw_url),
            "ORCH_CALLBACK_ALLOW_PRIVATE": "true",  # the callback receiver is on loopback
            **ORCH_ENV, "ORCH_UNKNOWN_OUTCOME_WINDOW_SECONDS": f"{self.p.window:g}",
        })
        self.env = env
        self.api = Service("api", [PY, "-m", "orchestrator.cli", "api", f"--port={self.api_port}", "--workers=2",
                                   "--threads=8"], env, self.logs)
        self.workers = [Service(f"worker{i + 1}", [PY, "-m", "orchestrator.cli", "worker", f"--name=w{i + 1}",
                                                   f"--concurrency={self.p.concurrency}"], env, self.logs)
                        for i in range(self.p.workers)]
        self.beat = Service("beat", [PY, "-m", "orchestrator.cli", "beat"], env, self.logs)
        for svc in (self.api, *self.workers, self.beat):
            svc.start()
            self.services.append(svc)
        self._wait(lambda: http_ok(f"{self.api_url}/healthz"), 90, "the API")
        self.token = create_api_key(self.pg.url, "chaos")

    def _sandbox(self, provider: str, extra: list[str]) -> Service:
        port = free_port()
        short = SHORT_RUN_FAULTS if self.p.jobs < SHORT_RUN_JOBS else []
        svc = Service(f"sandbox-{provider}", [PY, "-m", "orchestrator.cli", "sandbox", provider, f"--port={port}",
                                              f"--seed={self.p.seed}", *SANDBOX_FAULTS, *short, *extra],
                      {**os.environ}, self.logs)
        svc.start()
        self.services.append(svc)
        url = f"http://127.0.0.1:{port}"
        setattr(self, "fal_url" if provider == "fal" else "rw_url", url)
        self._wait(lambda: http_ok(f"{url}/_sandbox/health"), 60, f"the {provider} sandbox")
        return svc

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}; logs in {self.logs}")

    # -- load -----------------------------------------------------------------------------------

    def submit_all(self, bodies: list[dict[str, Any]]) -> None:
        """POST every batch with an Idempotency-Key, retrying through API restarts like a client would."""
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=60) as client:
            for i, body in enumerate(bodies):
                key = f"chaos-{self.p.seed}-{i}"
                deadline = time.monotonic() + 300
                while True:
                    try:
                        resp = client.post("/v1/batches", json={**body, "callback_url": self.receiver.url},
                                           headers={"Idempotency-Key": key})
                        if resp.status_code in (200, 201):
                            self.batch_ids.append(resp.json()["id"])
                            break
                        if resp.status_code < 500:
                            self.submit_error = f"POST /v1/batches answered {resp.status_code}: {resp.text[:400]}"
                            return
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        self.submit_error = f"batch {i} could not be submitted for 300 s"
                        return
                    time.sleep(0.5)
                time.sleep(0.3)  # batches keep arriving while the faults run

    # -- faults ---------------------------------------------------------------------------------

    def progress(self, engine: sa.Engine) -> tuple[int, int, int] | None:
        """(jobs final, jobs, batches whose completion was announced), or None while Postgres is down."""
        try:
            with engine.connect() as conn:
                final = conn.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.state.in_(TERMINAL)))
                total = conn.scalar(sa.select(sa.func.count()).select_from(Job))
                told = conn.scalar(sa.select(sa.func.count()).select_from(Batch).where(
                    Batch.completed_at.is_not(None), Batch.notified_round >= Batch.completion_round))
                return int(final or 0), int(total or 0), int(told or 0)
        except sa.exc.SQLAlchemyError:
            return None

    def kill_worker(self) -> None:
        svc = self.rng.choice(self.workers)
        svc.kill()
        self.faults["worker kill -9"] += 1
        svc.start()

    def in_flight_submits(self, engine: sa.Engine) -> int:
        """Job attempts whose submit intent is committed and whose answer is not recorded yet
        (an attempt already known to have an unknown outcome is not in flight)."""
        settled = sa.exists().where(JobEvent.job_id == Job.id, JobEvent.attempt == Job.attempt,
                                    JobEvent.kind.in_(["submit_outcome_unknown", "submit_skipped"]))
        query = sa.select(sa.func.count()).select_from(Job).where(
            Job.state == JobState.submitting, Job.submit_started_at.is_not(None),
            Job.provider_request_id.is_(None), ~settled)
        try:
            with engine.connect() as conn:
                return int(conn.scalar(query) or 0)
        except sa.exc.SQLAlchemyError:
            return 0

    def interrupt_submits(self, engine: sa.Engine) -> None:
        """Kill -9 every worker while a submit is in flight; the submits still in flight once no
        worker is alive are the ones whose answer the kill lost."""
        deadline = time.monotonic() + 60
        while self.in_flight_submits(engine) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        for svc in self.workers:
            svc.kill()
        self.faults["worker kill -9"] += len(self.workers)
        self.faults["submit interrupted by kill"] += self.in_flight_submits(engine)
        for svc in self.workers:
            svc.start()

    def process_fault(self, what: str, engine: sa.Engine) -> None:
        note(f"[seed {self.p.seed}] fault: {what}")
        if what == "submit":
            self.interrupt_submits(engine)
        elif what == "api":
            self.api.kill()
            time.sleep(1.5)
            self.api.start()
            self.faults["API kill + restart"] += 1
        elif what == "beat":
            self.beat.kill()
            time.sleep(1.5)
            self.beat.start()
            self.faults["beat kill + restart"] += 1
        elif what == "redis":
            self.redis.kill()
            time.sleep(2)
            self.redis.start()
            self.faults["Redis restart"] += 1
        elif what == "postgres":
            self.pg.stop_immediate()
            time.sleep(3)
            self.pg.start()
            self.faults["Postgres stop -m immediate + start"] += 1

    def drive(self, bodies: list[dict[str, Any]]) -> None:
        """Inject process faults until every batch is final and announced (or the run times out)."""
        submitter = threading.Thread(target=self.submit_all, args=(bodies,), daemon=True)
        submitter.start()
        engine = sa.create_engine(self.pg.url, pool_pre_ping=True)
        plan = list(PLAN)
        started, next_kill = time.monotonic(), time.monotonic() + self.p.kill_every
        last_note = next_fault = 0.0
        try:
            while time.monotonic() - started < self.p.timeout:
                if self.submit_error:
                    raise SystemExit(self.submit_error)
                seen = self.progress(engine)
                if seen is not None:
                    final, total, told = seen
                    share = final / self.p.jobs
                    # One process fault at a time, a few seconds apart, so each meets a system under load.
                    if plan and share >= plan[0][0] and time.monotonic() >= next_fault:
                        self.process_fault(plan.pop(0)[1], engine)
                        next_fault = time.monotonic() + 5
                    done = total == self.p.jobs and final == total and not submitter.is_alive()
                    if time.monotonic() - last_note > 15:
                        note(f"[seed {self.p.seed}] {final}/{self.p.jobs} jobs final, {told}/{len(bodies)} "
                             f"batches announced, {time.monotonic() - started:.0f}s")
                        last_note = time.monotonic()
                    if done:
                        while plan:  # finished before every process fault ran: run the rest now
                            self.process_fault(plan.pop(0)[1], engine)
                        if told == len(bodies):
                            return
                if time.monotonic() >= next_kill and (seen is None or seen[0] < self.p.jobs):
                    self.kill_worker()
                    next_kill = time.monotonic() + self.p.kill_every * self.rng.uniform(0.5, 1.5)
                time.sleep(0.25)
            note(f"[seed {self.p.seed}] timed out after {self.p.timeout:.0f}s")
        finally:
            engine.dispose()

    # -- audit ----------------------------------------------------------------------------------

    def ledger(self, url: str) -> dict[str, Any]:
        return httpx.get(f"{url}/_sandbox/ledger", timeout=120).json()

    def finish(self) -> tuple[Audit, Counter[str]]:
        self._wait(lambda: http_ok(f"{self.api_url}/healthz"), 60, "the API")
        ledgers = {"fal": self.ledger(self.fal_url), "runware": self.ledger(self.rw_url)}
        if self.p.keep:
            (self.tmp / "ledgers.json").write_text(json.dumps(ledgers))
        result = audit(self.pg.url, self.api_url, self.token, ledgers, self.tmp / "storage", self.receiver.calls)
        faults = injected(ledgers) + self.faults
        faults["media expired"] = result.failed_by_code.get("result_expired", 0)
        return result, faults

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.redis.kill()
        self.receiver.close()
        if self.p.keep:
            self.pg.stop_immediate()  # --keep keeps the database too, to read a failed run's timelines
        else:
            self.pg.destroy()
        if not self.p.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            note(f"kept {self.tmp}")


def run_once(p: Params) -> RunResult:
    """Start everything, run the load under faults, audit, tear down."""
    run = Run(p)
    started = time.monotonic()
    try:
        run.start()
        run.drive(workload(p, run.rng))
        time.sleep(2)  # let trailing duplicate webhooks and polls land before counting
        result, faults = run.finish()
    except BaseException:
        note(f"logs kept in {run.logs}")
        run.p = Params(**{**p.__dict__, "keep": True})
        raise
    finally:
        run.stop()
    return RunResult(p.seed, time.monotonic() - started, result, faults)


def rows(results: list[RunResult]) -> tuple[list[str], list[list[Any]]]:
    """The table: one column per run plus a total."""
    headers = ["figure", *[f"seed {r.seed}" for r in results], "total"]
    out: list[list[Any]] = []

    def add(name: str, values: list[Any]) -> None:
        total: Any = sum(v for v in values if isinstance(v, int | float))
        out.append([name, *values, total])

    add("jobs", [r.audit.jobs for r in results])
    add("batches", [r.audit.batches for r in results])
    add("seconds", [round(r.seconds) for r in results])
    for state in ("succeeded", "failed", "cancelled"):
        add(f"jobs {state}", [r.audit.states.get(state, 0) for r in results])
    codes = sorted({c for r in results for c in r.audit.failed_by_code})
    for code in codes:
        add(f"  failed: {code}", [r.audit.failed_by_code.get(code, 0) for r in results])
    out.append(["-- faults injected", *[""] * len(results), ""])
    for name in FAULT_ROWS:
        add(name, [r.faults.get(name, 0) for r in results])
    out.append(["-- audit", *[""] * len(results), ""])
    add("accepted submissions fal", [r.audit.accepted.get("fal", 0) for r in results])
    add("accepted submissions runware", [r.audit.accepted.get("runware", 0) for r in results])
    policies = sorted({k for r in results for k in r.audit.resubmits_by_policy})
    for pol in policies or ["resubmit"]:
        add(f"unknown-outcome resubmissions ({pol})", [r.audit.resubmits_by_policy.get(pol, 0) for r in results])
    for name, attr in (("LOST (jobs not final)", "not_final"), ("batches not final", "batches_not_final"),
                       ("PAID TWICE", "paid_twice"), ("  paid results discarded", "results_discarded"),
                       ("  earlier result after the kept one", "late_after_resubmit"),
                       ("paid generations (ledger)", "paid_generations"),
                       ("earlier attempt's result adopted", "adopted"), ("duplicate assets", "duplicate_assets"),
                       ("succeeded, images missing", "incomplete_jobs"), ("objects checked", "objects_checked"),
                       ("sha256 mismatches", "sha_mismatches"), ("orphan objects", "orphan_objects"),
                       ("batch counter mismatches", "counter_mismatches"), ("manifest lines", "manifest_lines"),
                       ("manifest mismatches", "manifest_mismatches"), ("completion callbacks", "callbacks"),
                       ("  of which redeliveries", "callback_redeliveries"),
                       ("batches never called back", "missing_callbacks"),
                       ("DOUBLE COMPLETIONS", "double_completions")):
        add(name, [getattr(r.audit, attr) for r in results])
    return headers, out


def print_results(results: list[RunResult]) -> None:
    headers, table = rows(results)
    print_table(headers, table)
    for r in results:
        for line in r.failures:
            print(f"FAIL seed {r.seed}: {line}")
        for line in r.audit.problems[:15]:
            print(f"  seed {r.seed}: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per run")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first run; run k uses seed + k")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    ap.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between worker kills")
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds per run before it counts as stuck")
    ap.add_argument("--keep", action="store_true", help="keep each run's directory (logs, storage)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    results = []
    for k in range(args.runs):
        p = Params(jobs=args.jobs, batch_size=args.batch_size, seed=args.seed + k, workers=args.workers,
                   concurrency=args.concurrency, kill_every=args.kill_every, timeout=args.timeout, keep=args.keep)
        result = run_once(p)
        results.append(result)
        print(f"\nrun {k + 1}/{args.runs} (seed {p.seed}, {p.jobs} jobs, {result.seconds:.0f}s)")
        print_results([result])
        sys.stdout.flush()
    if args.runs > 1:
        print(f"\nall {args.runs} runs")
        print_results(results)
    if args.json:
        args.json.write_text(json.dumps([{"seed": r.seed, "faults": r.faults, "failures": r.failures,
                                          "audit": {k: v for k, v in r.audit.__dict__.items()}}
                                         for r in results], default=str, indent=1))
    failed = [f for r in results for f in r.failures]
    print("\nRESULT:", "FAIL" if failed else "OK (0 lost, 0 paid twice, 0 duplicates, 0 mismatches, "
          "0 double completions; every fault injected)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

