"""Webhook benchmark: the receiver under gunicorn, and provider completion to stored image end to end.

    python bench/webhooks.py [--webhooks 3000] [--concurrency 32] [--clients 2] [--repeat 3] [--e2e-jobs 200]

Receiver: `orchestrator api` (gunicorn gthread, --api-workers x --api-threads) on a scratch database
whose jobs wait in `submitted`, with ORCH_FAL_JWKS_URL pointing at a JWKS this script serves for
its own Ed25519 key. A load generator in --clients processes of its own (bench/_loadgen.py: raw
keep-alive sockets, every request built and signed before the clock starts) keeps --concurrency
requests in flight and sends correctly signed fal webhooks (fal.md (c)). Server CPU is that of
every gunicorn process (/proc, before and after); the generator's CPU is printed beside it. Rows:

- signed, unique:      one webhook per job; each is verified, stored and queued (200 accepted);
- signed, each twice:  both copies of a webhook back to back (often concurrent); the second is
                       counted as a duplicate (200 duplicate);
- bad signature:       one flipped signature byte; recorded as rejected (401);
- baseline:            the same load against a WSGI app that reads the body and answers 200, on the
                       same gunicorn settings: the ceiling of this client and server on this machine.

End to end: the whole system (fal sandbox in this process, API, one worker) runs --e2e-jobs jobs with
a small generation latency; per job, from the sandbox starting its first webhook (the provider has
finished) to the job's image being stored (assets.stored_at), split into its steps.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _common as common
import _loadgen as loadgen
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from orchestrator.db import make_engine, new_id, utcnow
from orchestrator.models import Batch, BatchState, Delivery, Job, JobState
from orchestrator.netutil import free_port
from orchestrator.webhook_urls import attempt_token

MODEL = "fal-ai/flux/schnell"
USER_ID = "bench-user"
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Options:
    """The command line."""

    webhooks: int
    concurrency: int
    clients: int
    api_workers: int
    api_threads: int
    e2e_jobs: int
    e2e_latency: tuple[float, float]
    e2e_limit: int
    repeat: int
    redis_url: str
    skip_e2e: bool


# --- signing, the way fal signs ------------------------------------------------------------

class Signer:
    """An Ed25519 key that signs fal webhooks, and its JWKS."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def jwks(self) -> dict[str, Any]:
        """The public key as fal publishes it."""
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # unpadded, as a JWK has it
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "bench"}]}

    def headers(self, request_id: str, body: bytes, *, bad: bool = False) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers; `bad` flips one signature byte."""
        timestamp = str(int(time.time()))
        message = "\n".join([request_id, USER_ID, timestamp, hashlib.sha256(body).hexdigest()]).encode()
        signature = bytearray(self._key.sign(message))
        if bad:
            signature[0] ^= 0xFF
        return {"Content-Type": "application/json", "X-Fal-Webhook-Request-Id": request_id,
                "X-Fal-Webhook-User-Id": USER_ID, "X-Fal-Webhook-Timestamp": timestamp,
                "X-Fal-Webhook-Signature": bytes(signature).hex()}


@contextmanager
def jwks_server(document: dict[str, Any]) -> Iterator[str]:
    """Serve `document` at http://127.0.0.1:<port>/jwks.json; yields that URL."""
    body = json.dumps(document).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


# --- jobs waiting for their callbacks --------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A job in `submitted` and what its callback URL and body need."""

    job_id: uuid.UUID
    token: str
    request_id: str


@dataclass(frozen=True)
class Hook:
    """One webhook request, ready to send."""

    path: str
    body: bytes
    headers: dict[str, str]


def insert_jobs(db_url: str, n: int, tag: str) -> list[Target]:
    """One batch of `n` jobs in `submitted` (attempt 1), as dispatch leaves them."""
    now, batch_id = utcnow(), new_id()
    params = {"prompt": "p", "width": 512, "height": 512, "steps": 4, "num_images": 1, "output_format": "jpeg"}
    ids = [new_id() for _ in range(n)]
    targets = [Target(i, attempt_token(common.SECRET_KEY, i, 1), str(uuid.uuid4())) for i in ids]
    rows = [{"id": t.job_id, "batch_id": batch_id, "tenant": "bench", "position": i, "custom_id": f"{tag}-{i}",
             "requested_model": MODEL, "provider": "fal", "model": MODEL, "params": params, "state": JobState.submitted,
             "attempt": 1, "next_attempt_at": now, "provider_request_id": t.request_id,
             "submitted_at": now} for i, t in enumerate(targets)]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Batch).values(id=batch_id, tenant="bench", name=tag, total=n, count_submitted=n,
                                             state=BatchState.running, started_at=now))
        conn.execute(sa.insert(Job), rows)
    engine.dispose()
    return targets


def fal_hook(target: Target, signer: Signer, *, bad: bool = False) -> Hook:
    """A fal OK webhook for `target`, signed (or badly signed)."""
    image = {"url": f"https://v3.fal.media/files/bench/{target.request_id}.jpeg", "width": 512, "height": 512,
             "content_type": "image/jpeg", "file_name": f"{target.request_id}.jpeg", "file_size": 41234}
    body = json.dumps({"request_id": target.request_id, "gateway_request_id": target.request_id, "status": "OK",
                       "payload": {"images": [image], "seed": 196619188014358660, "has_nsfw_concepts": [False],
                                   "prompt": "p", "timings": {"inference": 0.4}}, "error": None}).encode()
    path = f"/webhooks/fal/{target.job_id}/1?token={quote(target.token, safe='')}"
    return Hook(path, body, signer.headers(target.request_id, body, bad=bad))


# --- load ---------------------------------------------------------------------------------

def fire(base_url: str, hooks: Sequence[Hook], opts: Options) -> loadgen.Load:
    """Send every hook with opts.concurrency in flight, from opts.clients processes."""
    host = base_url.split("://", 1)[1]
    return loadgen.fire(base_url, [loadgen.http_request(host, h.path, h.body, h.headers) for h in hooks],
                        opts.concurrency, opts.clients)


@dataclass(frozen=True)
class Row:
    """One line of the receiver table."""

    name: str
    expected: int  # the status every request should get
    load: loadgen.Load
    server_cpu: float

    def cells(self) -> list[Any]:
        """Table cells."""
        n = len(self.load.statuses)
        ok = sum(1 for s in self.load.statuses if s == self.expected)
        lat = [v * 1000 for v in self.load.latencies]
        others = Counter(s for s in self.load.statuses if s != self.expected)
        answered = " ".join([f"{ok} x {self.expected}", *(f"+{k} x {s}" for s, k in sorted(others.items()))])
        return [self.name, n, answered, ok / self.load.seconds, common.percentile(lat, 50),
                common.percentile(lat, 99), 1000 * self.server_cpu / n, 1000 * self.load.client_cpu / n,
                100 * self.load.client_cpu / self.load.seconds]


def measure(name: str, server: common.Proc, base_url: str, hooks: Sequence[Hook], expected: int,
            opts: Options) -> Row:
    """Fire `hooks` at a server, counting its CPU (every gunicorn process, from /proc)."""
    common.note(f"  {name}: {len(hooks)} requests")
    cpu0 = server.cpu_seconds()
    load = fire(base_url, hooks, opts)
    return Row(name, expected, load, server.cpu_seconds() - cpu0)


# --- the receiver section ------------------------------------------------------------------

def receiver_rows(opts: Options, db_url: str, tmp: Path) -> tuple[list[Row], str]:
    """Load the real receiver, then the trivial app; returns the rows and a database check line."""
    signer = Signer()
    n, half = opts.webhooks, opts.webhooks // 2
    warm, unique, twice = (insert_jobs(db_url, k, tag) for k, tag in ((64, "warm"), (n, "unique"), (half, "twice")))
    common.flush_redis(opts.redis_url)
    with jwks_server(signer.jwks()) as jwks_url:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = common.orchestrator_env(db_url, opts.redis_url, tmp, base_url, {"ORCH_FAL_JWKS_URL": jwks_url})
        api = common.start_api(env, port, tmp, opts.api_workers, opts.api_threads)
        try:
            fire(base_url, [fal_hook(t, signer) for t in warm], opts)  # JWKS, pools, imports
            rows = [
                measure("signed, unique", api, base_url, [fal_hook(t, signer) for t in unique], 200, opts),
                measure("signed, each twice", api, base_url,
                        [h for t in twice for h in [fal_hook(t, signer)] * 2], 200, opts),
                measure("bad signature", api, base_url, [fal_hook(t, signer, bad=True) for t in unique], 401,
                        opts),
            ]
        finally:
            api.stop()
    rows.append(baseline_row(opts, tmp, [fal_hook(t, signer) for t in unique]))
    common.flush_redis(opts.redis_url)  # the delivery nudges no worker consumed
    return rows, delivery_check(db_url)


def baseline_row(opts: Options, tmp: Path, hooks: Sequence[Hook]) -> Row:
    """The same load against `_ok_app` under the same gunicorn settings."""
    port = free_port()
    server = common.spawn("ok-app", [sys.executable, "-m", "gunicorn", f"--chdir={BENCH_DIR}", "--worker-class=gthread",
                                     f"--workers={opts.api_workers}", f"--threads={opts.api_threads}",
                                     f"--bind=127.0.0.1:{port}", "--timeout=60", "_ok_app:app"],
                          dict(os.environ), tmp)
    base_url = f"http://127.0.0.1:{port}"
    try:
        common.wait_until(lambda: common.http_ok(f"{base_url}/"), 60, "the trivial app", server)
        fire(base_url, hooks[:64], opts)
        return measure("baseline: 200-only app", server, base_url, hooks, 200, opts)
    finally:
        server.stop()


def delivery_check(db_url: str) -> str:
    """What the database recorded: verified rows, duplicates counted, rejected rows."""
    engine = make_engine(db_url)
    with engine.connect() as conn:
        verified, dups = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Delivery.duplicates), 0))
                                      .where(Delivery.verified)).one()
        rejected = conn.scalar(sa.select(sa.func.count()).where(~Delivery.verified))
    engine.dispose()
    return f"deliveries stored: {verified} verified (incl. 64 warm-up), {dups} duplicates counted, {rejected} rejected"


def print_receiver(opts: Options, runs: list[list[Row]], checks: list[str]) -> None:
    """The receiver table of each run, the medians over runs, and the ratio to the baseline."""
    print(f"\nReceiver: gunicorn gthread {opts.api_workers} workers x {opts.api_threads} threads, "
          f"{opts.concurrency} requests in flight from {opts.clients} load generator processes")
    headers = ["variant", "requests", "answered", "answered/s", "p50 ms", "p99 ms", "server CPU ms/req",
               "client CPU ms/req", "client CPU % of a core"]
    for i, (rows, check) in enumerate(zip(runs, checks, strict=True)):
        print(f"\nrun {i + 1} of {len(runs)}")
        common.print_table(headers, [r.cells() for r in rows])
        print(check)
    if len(runs) > 1:
        print(f"\nmedian of {len(runs)} runs")
        cells = [[r.cells() for r in rows] for rows in runs]
        common.print_table(headers, [[*cells[0][v][:3], *(statistics.median(c[v][k] for c in cells)
                                                          for k in range(3, len(headers)))]
                                     for v in range(len(runs[0]))])
    rates = [[len(r.load.statuses) / r.load.seconds for r in rows] for rows in runs]
    p50s = [[statistics.median(r.load.latencies) for r in rows] for rows in runs]
    print(f"\nsigned, unique / baseline (median over runs): throughput "
          f"{statistics.median(r[0] / r[-1] for r in rates):.2f}x, "
          f"p50 latency {statistics.median(p[0] / p[-1] for p in p50s):.1f}x")


# --- the end-to-end section ----------------------------------------------------------------

def run_e2e(opts: Options, db_url: str, tmp: Path) -> tuple[common.BatchRun, dict[str, common.Timeline]]:
    """The whole system: a batch of small-latency jobs, then each job's timeline."""
    items = [{"custom_id": f"e{i}", "model": MODEL, "prompt": f"a red kite over dunes, study {i}",
              "image_size": "square", "steps": 4, "output_format": "jpeg"} for i in range(opts.e2e_jobs)]
    common.note(f"end to end: {opts.e2e_jobs} jobs, latency {opts.e2e_latency}, limit {opts.e2e_limit}")
    with common.fal_sandbox(opts.e2e_latency, max(64, opts.e2e_limit)) as sandbox:
        result = common.run_batch(db_url, opts.redis_url, tmp, sandbox, items,
                                  common.Topology(opts.e2e_limit, api_workers=opts.api_workers,
                                                  api_threads=opts.api_threads), timeout=300)
        return result, common.timelines(db_url, sandbox.ledger)


def print_e2e(opts: Options, result: common.BatchRun, lines: dict[str, common.Timeline]) -> None:
    """Completion-to-stored percentiles and where that time goes."""
    lo, hi = opts.e2e_latency
    ok = result.batch["counts"]["succeeded"]
    print(f"\nEnd to end: {opts.e2e_jobs} jobs, latency {lo:g}-{hi:g} s, in-flight limit {opts.e2e_limit}, 1 worker: "
          f"{ok} succeeded in {result.wall:.1f} s = {ok / result.wall:.1f} jobs/s; "
          f"CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu.items()))
    warm = after_first(lines, opts.e2e_limit)
    steps = [("provider completed -> image stored", lines, "completed", "stored"),
             (f"  same, without the first {opts.e2e_limit} (cold processes)", warm, "completed", "stored"),
             ("  webhook delivered and stored", lines, "completed", "received"),
             ("  delivery queued and reconciled", lines, "received", "processed"),
             ("  image downloaded, verified, stored", lines, "processed", "stored"),
             ("(provider running: submit -> completed)", lines, "submitted", "completed")]
    rows = []
    for label, which, start, end in steps:
        ms = [v * 1000 for v in common.spans(which, start, end)]
        rows.append([label, len(ms), common.percentile(ms, 50), common.percentile(ms, 99),
                     statistics.fmean(ms) if ms else float("nan")])
    common.print_table(["step", "jobs", "p50 ms", "p99 ms", "mean ms"], rows)
    common.print_task_table(result, common.Topology(opts.e2e_limit).worker_concurrency)
    for line in result.problems[:10]:
        print(f"log: {line}")


def after_first(lines: dict[str, common.Timeline], skip: int) -> dict[str, common.Timeline]:
    """The jobs that completed after the first `skip` (whose callbacks met freshly started processes)."""
    done = sorted((t.completed, job) for job, t in lines.items() if t.completed is not None)
    return {job: lines[job] for _, job in done[skip:]}


# --- main ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> Options:
    """Options from the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=3000, help="requests per receiver variant (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--api-threads", type=int, default=8, help="threads per gunicorn worker (default 8)")
    parser.add_argument("--e2e-jobs", type=int, default=200, help="jobs in the end-to-end run (default 200)")
    parser.add_argument("--e2e-latency", default="0.05,0.2", help="sandbox latency MIN,MAX s (default 0.05,0.2)")
    parser.add_argument("--e2e-limit", type=int, default=16, help="in-flight limit end to end (default 16)")
    parser.add_argument("--repeat", type=int, default=1, help="receiver runs, each on a fresh database (default 1)")
    parser.add_argument("--skip-e2e", action="store_true", help="only the receiver")
    parser.add_argument("--redis-url", default=common.REDIS_URL, help="Redis database to use (flushed!)")
    args = parser.parse_args(argv)
    lo, hi = (float(v) for v in args.e2e_latency.split(","))
    return Options(args.webhooks, args.concurrency, args.clients, args.api_workers, args.api_threads, args.e2e_jobs,
                   (lo, hi), args.e2e_limit, args.repeat, args.redis_url, args.skip_e2e)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    opts = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs, checks = [], []
        for _ in range(opts.repeat):
            with common.scratch_database() as db_url:
                rows, check = receiver_rows(opts, db_url, Path(tmp))
            runs.append(rows)
            checks.append(check)
        if not opts.skip_e2e:
            with common.scratch_database() as db_url:
                result, lines = run_e2e(opts, db_url, Path(tmp))
    print_receiver(opts, runs, checks)
    if not opts.skip_e2e:
        print_e2e(opts, result, lines)


if __name__ == "__main__":
    main()
