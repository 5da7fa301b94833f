"""Shared plumbing for the system benchmarks: scratch database, processes, CPU accounting, tables.

Every process of the orchestrator (API under gunicorn, Celery workers) runs as a subprocess in
its own session, so its CPU time can be read from /proc for the whole process group; the
sandboxes and the load generators stay in the benchmark process and are never counted.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from orchestrator import auth, netutil, scratch_db, webhook_urls
from orchestrator.db import make_engine, make_session_factory, session_scope
from orchestrator.models import FINAL_BATCH, Asset, Delivery, Job
from orchestrator.sandbox import FalConfig, FalSandbox, Faults, sandbox_env

ADMIN_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# The benchmarks flush their Redis database. The tests flush db 9 (ORCH_TEST_REDIS_URL) whenever a
# stack starts, so by default a benchmark uses its own database and can run next to the tests.
REDIS_URL = os.environ.get("ORCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# BENCH_PORTS=LOW-HIGH keeps every server a benchmark starts inside one engineer's port range.
_PORTS = os.environ.get("BENCH_PORTS", "")
_TASK_DONE = re.compile(r"Task workers\.([\w.]+)\[[^\]]+\] succeeded in ([0-9.e-]+)s")


# --- database and broker -------------------------------------------------------------------

@contextmanager
def scratch_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A fresh database migrated to head; dropped afterwards even if the benchmark fails."""
    with scratch_db.scratch_database(admin_url, "orch_bench", migrate=True) as url:
        yield url


def flush_redis(url: str) -> None:
    """Empty the benchmark's Redis database (queued nudges of an earlier run)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def create_api_key(db_url: str, tenant: str = "bench") -> str:
    """A client API key for `tenant`; returns the bearer token."""
    engine = make_engine(db_url)
    with session_scope(make_session_factory(engine)) as session:
        _, token = auth.create_key(session, tenant)
    engine.dispose()
    return token


def free_port() -> int:
    """A free loopback port: in BENCH_PORTS (LOW-HIGH, inclusive) if set, else orchestrator.netutil's."""
    if not _PORTS:
        return netutil.free_port()
    low, high = (int(v) for v in _PORTS.split("-"))
    for port in range(low, high + 1):
        if netutil.port_is_free(port):
            return port
    raise SystemExit(f"no free port in BENCH_PORTS={_PORTS}")


# --- processes -----------------------------------------------------------------------------

@dataclass
class Proc:
    """One orchestrator process (and its children), started in its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in the group, plus reaped children."""
        return group_cpu_seconds(self.popen.pid)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it if it lingers."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.popen.poll() is not None:
                return
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue

    def tail(self, chars: int = 4000) -> str:
        """The end of the log, headed by the process name and whether it is still running."""
        text = self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
        status = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        return f"--- {self.name} ({status})\n{text}"

    def task_seconds(self) -> dict[str, list[float]]:
        """Run time of every task the log reports (Celery logs each at INFO), by task name."""
        out: dict[str, list[float]] = {}
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for match in _TASK_DONE.finditer(text):
            out.setdefault(match.group(1), []).append(float(match.group(2)))
        return out

    def log_problems(self) -> list[str]:
        """Lines of the log that report an error or a traceback."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line)]


def spawn(name: str, args: Sequence[str], env: dict[str, str], tmp: Path) -> Proc:
    """Start a process in a new session with its output in `tmp/<name>.log`."""
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return Proc(name, popen, log)


def group_members(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    """(/proc/<pid>, its stat fields after the name) of every live process in group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = raw[raw.rindex(")") + 2:].split()  # fields[k] is stat field k + 3 (1-based)
        if int(fields[2]) == pgid:
            yield entry, fields


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (utime + stime + cutime + cstime) of every process in group `pgid`."""
    ticks = sum(sum(int(v) for v in fields[11:15]) for _, fields in group_members(pgid))
    return ticks / CLK_TCK


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in group `pgid` (VmRSS, from statm)."""
    total = 0
    for entry, _ in group_members(pgid):
        try:
            total += int((entry / "statm").read_text().split()[1]) * PAGE_BYTES
        except OSError:
            continue  # exited while we looked
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


def busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of all cores' time spent busy between two machine_cpu() readings."""
    return 100 * (after[0] - before[0]) / max(1e-9, after[1] - before[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    """Poll `check` until true; fail with the process log if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            break
        time.sleep(0.1)
    tail = proc.log.read_text(errors="replace")[-3000:] if proc is not None and proc.log.exists() else ""
    raise SystemExit(f"timed out waiting for {what}\n{tail}")


def http_ok(url: str) -> bool:
    """True if GET `url` answers 2xx."""
    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False


SECRET_KEY = "bench-secret-key-0123456789"


def orchestrator_env(db_url: str, redis_url: str, tmp: Path, api_url: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment for API and worker processes: this process's, minus ORCH_*, plus the bench's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {
        **base, "ORCH_DATABASE_URL": db_url, "ORCH_BROKER_URL": redis_url, "ORCH_DATA_DIR": str(tmp / "data"),
        "ORCH_STORAGE_URL": (tmp / "storage").as_uri(), "ORCH_PUBLIC_URL": api_url, "ORCH_API_URL": api_url,
        "ORCH_SECRET_KEY": SECRET_KEY, **sandbox_env(), **extra,  # sandbox_env(): the development keys
    }


def start_api(env: dict[str, str], port: int, tmp: Path, workers: int, threads: int) -> Proc:
    """`orchestrator api` (gunicorn, gthread) on `port`; returns once /healthz answers."""
    proc = spawn("api", [sys.executable, "-m", "orchestrator.cli", "api", f"--port={port}",
                         f"--workers={workers}", f"--threads={threads}"], env, tmp)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "the API", proc)
    return proc


def start_worker(env: dict[str, str], name: str, concurrency: int, tmp: Path) -> Proc:
    """`orchestrator worker`; returns once Celery reports it is ready."""
    proc = spawn(name, [sys.executable, "-m", "orchestrator.cli", "worker", f"--name={name}",
                        f"--concurrency={concurrency}"], env, tmp)
    wait_until(lambda: b" ready." in proc.log.read_bytes(), 60, f"worker {name}", proc)
    return proc


# --- a batch through the whole system ------------------------------------------------------

@dataclass(frozen=True)
class Topology:
    """How many orchestrator processes, and how wide."""

    limit: int  # ORCH_FAL_MAX_IN_FLIGHT
    workers: int = 1
    worker_concurrency: int = 16
    api_workers: int = 2
    api_threads: int = 8
    beat: bool = False  # also run `orchestrator beat` (the periodic sweep), as deployed


@dataclass(frozen=True)
class BatchRun:
    """One batch from POST to final state."""

    started: float  # Unix time of the POST
    wall: float  # seconds from the POST to the final state
    batch: dict[str, Any]  # the final batch as the API shows it
    cpu: dict[str, float]  # CPU seconds per process over the run
    machine_busy: float  # % of all cores busy over the run (anything on the machine)
    problems: list[str]  # error lines in the processes' logs
    task_seconds: dict[str, list[float]]  # worker task run times by task name
    io: dict[str, float] | None = None  # database and broker round trips over the run (see IoCounters)


@contextmanager
def fal_sandbox(latency: tuple[float, float], concurrency: int) -> Iterator[FalSandbox]:
    """A fresh fal sandbox in this process; quick webhook retries."""
    faults = Faults(latency_min=latency[0], latency_max=latency[1])
    sandbox = FalSandbox(FalConfig(faults=faults, concurrency=concurrency, seed=7, webhook_backoff=0.5,
                                   webhook_backoff_max=2.0))
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def fal_env(sandbox: Any, limit: int) -> dict[str, str]:
    """Provider settings: the sandbox, the in-flight limit, a request rate that never binds."""
    return {**sandbox_env(fal_url=sandbox.url), "ORCH_FAL_MAX_IN_FLIGHT": str(limit),
            "ORCH_FAL_RATE_PER_SECOND": "1000"}


def run_batch(db_url: str, redis_url: str, tmp: Path, sandbox: Any, items: list[dict[str, Any]],
              topo: Topology, timeout: float) -> BatchRun:
    """Start API and workers, POST `items` as one batch, wait for it to be final, stop everything.

    `sandbox` is a FalSandbox or a SandboxProcess (anything with url, jwks_url and ledger).
    """
    flush_redis(redis_url)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    counters = IoCounters(db_url, redis_url, tmp / "sqlstats")
    env = counters.env(orchestrator_env(db_url, redis_url, tmp, api_url, fal_env(sandbox, topo.limit)))
    procs = [start_api(env, port, tmp, topo.api_workers, topo.api_threads)]
    try:
        procs += [start_worker(env, f"worker{i + 1}", topo.worker_concurrency, tmp) for i in range(topo.workers)]
        if topo.beat:
            procs.append(start_beat(env, tmp))
        token = create_api_key(db_url)
        time.sleep(0.5)  # let start-up statements reach the counters before the first reading
        cpu0, machine0, io0 = {p.name: p.cpu_seconds() for p in procs}, machine_cpu(), counters.read()
        try:
            started, wall, batch = submit_and_wait(api_url, token, items, timeout)
        except SystemExit as exc:  # say why before the logs go away with the temporary directory
            raise SystemExit(f"{exc}\n" + "\n".join(p.tail() for p in procs)) from None
        cpu = {p.name: p.cpu_seconds() - cpu0[p.name] for p in procs}
        busy = busy_percent(machine0, machine_cpu())
        time.sleep(0.5)  # the counter files are rewritten every 0.2 s
        io1 = counters.read()
        if os.environ.get("BENCH_SQLSTATS_DETAIL"):
            top = sorted(counters.shapes().items(), key=lambda kv: -kv[1])[:60]
            print(f"\nstatement shapes per job ({len(items)} jobs, start-up included)")
            for text, n in top:
                print(f"{n / len(items):7.2f}  {text}")
    finally:
        for proc in procs:
            proc.stop()
    io = {k: io1[k] - io0.get(k, 0) for k in io1}
    io.update(counters.server_diff())
    problems = [f"{p.name}: {line}" for p in procs for line in p.log_problems()]
    tasks: dict[str, list[float]] = {}
    for proc in procs[1:]:
        for name, values in proc.task_seconds().items():
            tasks.setdefault(name, []).extend(values)
    return BatchRun(started, wall, batch, cpu, busy, problems, tasks, io)


def start_beat(env: dict[str, str], tmp: Path) -> Proc:
    """`orchestrator beat` (the sweep scheduler); returns once it has started."""
    proc = spawn("beat", [sys.executable, "-m", "orchestrator.cli", "beat"], env, tmp)
    wait_until(lambda: b"beat: Starting" in proc.log.read_bytes(), 60, "beat", proc)
    return proc


HOOKS_DIR = Path(__file__).resolve().parent / "_hooks"


class IoCounters:
    """Round trips of the orchestrator's processes: SQL at the driver, commits at the server, Redis.

    The Postgres here has no pg_stat_statements (it is not preloaded, and the server is shared),
    so statements are counted in each orchestrator process by bench/_hooks/sitecustomize.py
    (executes incl. pool pings, implicit BEGINs, COMMITs, ROLLBACKs). Commits and row counters
    come from pg_stat_database for the scratch database (everything that touched it, the
    benchmark's own polling included); broker messages and commands from Redis INFO commandstats.
    """

    def __init__(self, db_url: str, redis_url: str, folder: Path):
        self.db_url, self.redis_url, self.folder = db_url, redis_url, folder
        folder.mkdir(parents=True, exist_ok=True)
        self._server0 = self._server()

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """The orchestrator processes' environment with the counting hook on."""
        path = os.pathsep.join(p for p in (str(HOOKS_DIR), env.get("PYTHONPATH", "")) if p)
        return {**env, "BENCH_SQLSTATS_DIR": str(self.folder), "PYTHONPATH": path}

    def read(self) -> dict[str, float]:
        """Driver-side totals over every process so far, plus Redis command counts."""
        out: dict[str, float] = {}
        for path in self.folder.glob("*.json"):
            if path.name.endswith(".shapes.json"):
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now; the next reading has it
            for key, value in data.items():
                out[f"sql_{key}"] = out.get(f"sql_{key}", 0) + value
        out["sql_statements"] = sum(out.get(f"sql_{k}", 0) for k in ("execute", "begin", "commit", "rollback"))
        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        out["redis_commands"] = sum(v["calls"] for v in stats.values())
        # kombu's Redis transport publishes a task with one LPUSH to the queue's list.
        out["broker_messages"] = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("lpush", "rpush"))
        return out

    def shapes(self) -> dict[str, int]:
        """Statement shapes over every process (BENCH_SQLSTATS_DETAIL=1 only; start-up included)."""
        out: dict[str, int] = {}
        for path in self.folder.glob("*.shapes.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key, value in data.items():
                out[key] = out.get(key, 0) + value
        return out

    def _server(self) -> dict[str, float]:
        name = self.db_url.rsplit("/", 1)[1]
        engine = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
                row = conn.execute(sa.text(
                    "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, "
                    "tup_deleted FROM pg_stat_database WHERE datname = :n"), {"n": name}).one()
        finally:
            engine.dispose()
        return {f"pg_{k}": float(v) for k, v in row._mapping.items()}

    def server_diff(self) -> dict[str, float]:
        """pg_stat_database deltas since construction (read once every backend has gone), plus
        rows read by sequential and index scans per table (totals: the database is fresh)."""
        time.sleep(1.0)  # backends flush their statistics when they exit, at most every second
        now = self._server()
        out = {k: now[k] - self._server0.get(k, 0) for k in now}
        engine = sa.create_engine(self.db_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for row in conn.execute(sa.text("SELECT relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch "
                                                "FROM pg_stat_user_tables")):
                    out[f"table_{row.relname}_seq_scan"] = float(row.seq_scan or 0)
                    out[f"table_{row.relname}_seq_tup_read"] = float(row.seq_tup_read or 0)
                    out[f"table_{row.relname}_idx_scan"] = float(row.idx_scan or 0)
                    out[f"table_{row.relname}_idx_tup_fetch"] = float(row.idx_tup_fetch or 0)
        finally:
            engine.dispose()
        return out


class RemoteLedger:
    """The parts of a sandbox Ledger the benchmarks read, fetched from its admin endpoint."""

    def __init__(self, url: str):
        self.url = url
        self._snap: dict[str, Any] | None = None

    def refresh(self) -> RemoteLedger:
        """Fetch a fresh snapshot."""
        self._snap = httpx.get(f"{self.url}/_sandbox/ledger", timeout=60).json()
        return self

    @property
    def snap(self) -> dict[str, Any]:
        """The last snapshot (fetched on first use)."""
        return self._snap if self._snap is not None else self.refresh().snap

    @property
    def submissions(self) -> list[dict[str, Any]]:
        """Every submission the sandbox saw."""
        return list(self.snap["submissions"])

    def webhooks(self) -> list[dict[str, Any]]:
        """Webhook attempts only (no uploads)."""
        return [d for d in self.snap["deliveries"] if d["kind"] == "webhook"]

    def peak_inflight(self) -> int:
        """Highest concurrent in-flight count of any key."""
        return max(self.snap["peak_inflight"].values(), default=0)


@dataclass
class SandboxProcess:
    """`orchestrator sandbox fal` in its own process (its CPU is never counted)."""

    proc: Proc
    url: str

    @property
    def jwks_url(self) -> str:
        """Where the webhook verification keys are published."""
        return f"{self.url}/.well-known/jwks.json"

    @property
    def ledger(self) -> RemoteLedger:
        """A fresh ledger snapshot."""
        return RemoteLedger(self.url).refresh()


@contextmanager
def fal_sandbox_process(latency: tuple[float, float], concurrency: int, tmp: Path) -> Iterator[SandboxProcess]:
    """A fresh fal sandbox in a process of its own; quick webhook retries."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "FAL_"))}
    proc = spawn(f"sandbox-{port}", [sys.executable, "-m", "orchestrator.cli", "sandbox", "fal", f"--port={port}",
                                     f"--latency-min={latency[0]}", f"--latency-max={latency[1]}", "--seed=7",
                                     f"--concurrency={concurrency}", "--webhook-backoff=0.5"], env, tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/_sandbox/health"), 60, "the fal sandbox", proc)
        yield SandboxProcess(proc, url)
    finally:
        proc.stop()


def submit_and_wait(api_url: str, token: str, items: list[dict[str, Any]],
                    timeout: float) -> tuple[float, float, dict[str, Any]]:
    """POST the batch, poll until it is final; returns (Unix start time, seconds, final batch)."""
    batch: dict[str, Any] = {}
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        epoch, start = time.time(), time.perf_counter()
        resp = client.post("/v1/batches", json={"name": "bench", "items": items})
        if resp.status_code != 201:
            raise SystemExit(f"POST /v1/batches answered {resp.status_code}: {resp.text[:500]}")
        batch_id = resp.json()["id"]
        while time.perf_counter() < start + timeout:
            batch = client.get(f"/v1/batches/{batch_id}").json()
            if batch["state"] in FINAL_BATCH:
                return epoch, time.perf_counter() - start, batch
            time.sleep(0.2)
    raise SystemExit(f"batch not final after {timeout:.0f}s: {batch}")


# --- job timelines -------------------------------------------------------------------------

@dataclass(frozen=True)
class Timeline:
    """Wall-clock instants (Unix seconds) in one job's life; None where it never got there."""

    submitted: float | None  # the provider accepted the request (sandbox ledger)
    completed: float | None  # the provider finished and started its first webhook (sandbox ledger)
    received: float | None  # our receiver stored the delivery (deliveries.received_at)
    processed: float | None  # a worker reconciled the delivery (deliveries.processed_at)
    stored: float | None  # the last image was stored (assets.stored_at)
    answered: float | None = None  # our receiver's 2xx reached the provider (sandbox ledger, first webhook)


def job_of(url: str | None) -> str | None:
    """The job id named by a provider webhook URL."""
    found = webhook_urls.parse(url)
    return str(found.job_id) if found else None


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def accepted(ledger: Any) -> list[dict[str, Any]]:
    """Submissions the sandbox accepted."""
    return [s for s in ledger.submissions if s.get("outcome") == "accepted"]


def timelines(db_url: str, ledger: Any) -> dict[str, Timeline]:
    """Per job: the sandbox's view (submit, completion) joined with the database's."""
    submitted = {job_of(s.get("webhook_url")): s["time"] for s in accepted(ledger)}
    completed: dict[str | None, float] = {}
    answered: dict[str | None, float] = {}
    for d in ledger.webhooks():
        if d.get("attempt") == 1 and not d.get("copy"):
            # The sandbox starts a webhook as the generation completes; its ledger entry is written
            # when the attempt ends, `duration` after the start (connection wait included).
            completed[job_of(d["url"])] = d["time"] - (d.get("duration") or 0.0)
        if d.get("outcome") == "delivered":
            job = job_of(d["url"])
            answered[job] = min(d["time"], answered.get(job, d["time"]))
    engine = make_engine(db_url)
    with engine.connect() as conn:
        received = dict(conn.execute(sa.select(Delivery.job_id, sa.func.min(Delivery.received_at))
                                     .where(Delivery.verified).group_by(Delivery.job_id)).all())
        processed = dict(conn.execute(sa.select(Delivery.job_id, sa.func.min(Delivery.processed_at))
                                      .where(Delivery.verified).group_by(Delivery.job_id)).all())
        stored = dict(conn.execute(sa.select(Asset.job_id, sa.func.max(Asset.stored_at)).group_by(Asset.job_id)).all())
        jobs = conn.execute(sa.select(Job.id)).scalars().all()
    engine.dispose()
    return {str(j): Timeline(submitted.get(str(j)), completed.get(str(j)), _ts(received.get(j)),
                             _ts(processed.get(j)), _ts(stored.get(j)), answered.get(str(j))) for j in jobs}


def spans(lines: dict[str, Timeline], start: str, end: str) -> list[float]:
    """Seconds from `start` to `end` for every job that has both."""
    out = []
    for t in lines.values():
        a, b = getattr(t, start), getattr(t, end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


# --- reporting -----------------------------------------------------------------------------

def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain right-aligned table (first column left-aligned)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    for row in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def print_task_table(run: BatchRun, threads: int) -> None:
    """Worker task run times (lock waits included) and the share of worker threads each kept busy."""
    rows = []
    for name, values in sorted(run.task_seconds.items()):
        ms = [v * 1000 for v in values]
        rows.append([name, len(ms), percentile(ms, 50), percentile(ms, 99), sum(values),
                     100 * sum(values) / (threads * run.wall)])
    print(f"\nWorker tasks ({threads} worker threads in all; run times include waiting for row locks)")
    print_table(["task", "runs", "p50 ms", "p99 ms", "thread-s", "% of threads"], rows)


def note(message: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)
