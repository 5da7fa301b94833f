"""Benchmark the provider sandboxes: submit throughput and webhook delivery throughput.

Starts each sandbox with near-zero generation latency and no concurrency cap, submits N requests
with webhooks from an aiohttp client, and counts webhooks arriving at a trivial local aiohttp
receiver. By default the sandbox runs as its own process (`orchestrator sandbox ...`), as in the
demo; `--in-process` runs it in a thread of this process instead, where it shares one GIL with the
client and the receiver. Usage: python bench/sandbox.py [--requests 2000] [--parallel 64] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from orchestrator.netutil import free_port
from orchestrator.sandbox import FAL_DEV_KEY, RUNWARE_DEV_KEY, FalSandbox, Faults, RunwareSandbox

NEAR_ZERO = Faults(latency_min=0.001, latency_max=0.002)
Submit = Callable[[aiohttp.ClientSession, int], Awaitable[str]]


@dataclass
class Result:
    """One benchmark row."""

    name: str
    requests: int
    submit_seconds: float
    webhook_seconds: float
    latencies: list[float]

    def row(self) -> str:
        """Format as a table row."""
        p50 = statistics.median(self.latencies) * 1000
        p95 = statistics.quantiles(self.latencies, n=20)[-1] * 1000
        return (
            f"{self.name:<9}{self.requests:>9}{self.submit_seconds:>10.2f}{self.requests / self.submit_seconds:>12.0f}"
            f"{self.webhook_seconds:>10.2f}{self.requests / self.webhook_seconds:>12.0f}{p50:>9.0f}{p95:>9.0f}"
        )


class Receiver:
    """A trivial webhook endpoint that notes when each request id arrived."""

    def __init__(self, id_of: Callable[[dict], str]) -> None:
        self.arrived: dict[str, float] = {}
        self.id_of = id_of
        self.all_in = asyncio.Event()
        self.expected = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.arrived.setdefault(self.id_of(body), time.perf_counter())
        if len(self.arrived) >= self.expected:
            self.all_in.set()
        return web.Response(text="ok")


async def start_receiver(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def run(name: str, submit: Submit, receiver: Receiver, requests: int, parallel: int) -> Result:
    receiver.expected = requests
    submitted: dict[str, float] = {}
    semaphore = asyncio.Semaphore(parallel)
    connector = aiohttp.TCPConnector(limit=parallel)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            async with semaphore:
                request_id = await submit(session, i)
                submitted[request_id] = time.perf_counter()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        submit_seconds = time.perf_counter() - started
        await asyncio.wait_for(receiver.all_in.wait(), 120)
        webhook_seconds = time.perf_counter() - started
    latencies = [receiver.arrived[rid] - t for rid, t in submitted.items()]
    return Result(name, requests, submit_seconds, webhook_seconds, latencies)


@contextlib.asynccontextmanager
async def sandbox_process(provider: str, *args: str) -> AsyncIterator[str]:
    """Run `orchestrator sandbox <provider>` as a child process; yield its base URL."""
    port = free_port()
    launch = "from orchestrator.cli.sandbox import sandbox; sandbox()"
    latency = ["--latency-min", str(NEAR_ZERO.latency_min), "--latency-max", str(NEAR_ZERO.latency_max)]
    cmd = [sys.executable, "-c", launch, provider, "--port", str(port), *latency, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/_sandbox/health") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def sandbox_thread(provider: str, *args: str) -> AsyncIterator[str]:
    """Run the sandbox in a background thread of this process; yield its base URL."""
    if provider == "fal":
        box: FalSandbox | RunwareSandbox = FalSandbox(keys=(FAL_DEV_KEY,), concurrency=1_000_000, faults=NEAR_ZERO)
    else:
        box = RunwareSandbox(keys=(RUNWARE_DEV_KEY,), faults=NEAR_ZERO)
    with box:
        yield box.url


async def bench_fal(requests: int, parallel: int, in_process: bool) -> Result:
    receiver = Receiver(lambda body: body["request_id"])
    runner, hook = await start_receiver(receiver)
    launch = sandbox_thread if in_process else sandbox_process
    headers = {"Authorization": f"Key {FAL_DEV_KEY}"}

    async def submit(session: aiohttp.ClientSession, i: int) -> str:
        payload = {"prompt": f"benchmark prompt {i}", "image_size": "square"}
        async with session.post(url, params={"fal_webhook": hook}, json=payload, headers=headers) as response:
            response.raise_for_status()
            return str((await response.json())["request_id"])

    try:
        async with launch("fal", "--concurrency", "1000000", "--key", FAL_DEV_KEY) as base:
            url = f"{base}/fal-ai/flux/schnell"
            return await run("fal", submit, receiver, requests, parallel)
    finally:
        await runner.cleanup()


async def bench_runware(requests: int, parallel: int, in_process: bool) -> Result:
    receiver = Receiver(lambda body: body["data"][0]["taskUUID"])
    runner, hook = await start_receiver(receiver)
    launch = sandbox_thread if in_process else sandbox_process
    headers = {"Authorization": f"Bearer {RUNWARE_DEV_KEY}"}

    async def submit(session: aiohttp.ClientSession, i: int) -> str:
        task = {
            "taskType": "imageInference",
            "taskUUID": str(uuid.uuid4()),
            "model": "runware:100@1",
            "positivePrompt": f"benchmark prompt {i}",
            "width": 512,
            "height": 512,
            "deliveryMethod": "async",
            "webhookURL": hook,
        }
        async with session.post(api_url, json=[task], headers=headers) as response:
            response.raise_for_status()
            return str(task["taskUUID"])

    try:
        async with launch("runware", "--key", RUNWARE_DEV_KEY) as base:
            api_url = f"{base}/v1"
            return await run("runware", submit, receiver, requests, parallel)
    finally:
        await runner.cleanup()


def main() -> None:
    """Run both benchmarks and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=64, help="client connections")
    parser.add_argument("--in-process", action="store_true", help="run the sandbox in a thread of this process")
    args = parser.parse_args()
    results = [
        asyncio.run(bench(args.requests, args.parallel, args.in_process)) for bench in (bench_fal, bench_runware)
    ]
    print(
        f"{'sandbox':<9}{'requests':>9}{'submit s':>10}{'submits/s':>12}{'e2e s':>10}{'webhooks/s':>12}"
        f"{'p50 ms':>9}{'p95 ms':>9}"
    )
    for result in results:
        print(result.row())
    mode = "a thread of this process" if args.in_process else "its own process"
    print(f"sandbox in {mode}; e2e = first submit to last webhook received (512x512 JPEG per request);")
    print("p50/p95 = submit answered to its webhook received.")


if __name__ == "__main__":
    main()
