"""Outbound HTTP from a sandbox: webhook POSTs (and Runware upload PUTs) with retries and fault injection."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from orchestrator.sandbox.common.faults import Dice, Faults
from orchestrator.sandbox.common.ledger import Ledger


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed delivery is retried."""

    retries: int
    backoff: float  # delay before the first retry; doubles per retry
    backoff_max: float
    jitter: float  # each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
    timeout: float  # per attempt

    def delay(self, retry: int, dice: Dice) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        base = min(self.backoff * 2 ** (retry - 1), self.backoff_max)
        return base * dice.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass
class Delivery:
    """One outbound message; `headers` is called per attempt so signatures can carry a fresh timestamp."""

    url: str
    body: bytes
    ref: dict[str, Any]  # ledger fields identifying what is delivered (provider, request id, ...)
    headers: Callable[[], dict[str, str]] = field(default=lambda: {"Content-Type": "application/json"})
    method: str = "POST"
    kind: str = "webhook"
    retries: int | None = None  # None: the sender's policy


Job = Callable[[], Coroutine[Any, Any, None]]


class WebhookSender:
    """Delivers messages concurrently; thousands may be pending at once."""

    def __init__(self, ledger: Ledger, dice: Dice, policy: RetryPolicy, max_connections: int) -> None:
        self.ledger = ledger
        self.dice = dice
        self.policy = policy
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffer: list[Job] = []
        self._flush_handle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        """Create the HTTP client session (on the sandbox loop)."""
        connector = aiohttp.TCPConnector(limit=self._max_connections)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)

    async def close(self) -> None:
        """Cancel pending deliveries and close the session."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def pending(self) -> int:
        """Deliveries not finished yet (waiting, in flight or between retries)."""
        return len(self._tasks) + len(self._buffer)

    def send(self, delivery: Delivery, faults: Faults) -> asyncio.Future[None]:
        """Queue `delivery` under `faults`; the future resolves after the first attempt (or the drop)."""
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if delivery.kind == "webhook" and self.dice.chance(faults.webhook_drop_rate):
            self._record(delivery, attempt=0, copy=0, outcome="dropped")
            first.set_result(None)
            return first
        copies, concurrent, delay = 1, False, 0.0
        if delivery.kind == "webhook":
            if self.dice.chance(faults.webhook_duplicate_rate):
                copies, concurrent = 1 + faults.webhook_duplicates, faults.webhook_duplicate_concurrent
            if self.dice.chance(faults.webhook_delay_rate):
                delay = faults.webhook_delay_seconds
            # Mark injected faults on the ledger entries, so a chaos audit can count them.
            marks = {"duplicated": copies > 1, "delayed": delay > 0, "reordered": faults.webhook_reorder_window > 0}
            if any(marks.values()):
                delivery = dataclasses.replace(delivery, ref={**delivery.ref, **{k: v for k, v in marks.items() if v}})

        def job() -> Coroutine[Any, Any, None]:
            return self._run_copies(delivery, copies, concurrent, delay, first)

        if delivery.kind == "webhook" and faults.webhook_reorder_window > 0:
            self._buffer.append(job)
            if self._flush_handle is None:
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_later(faults.webhook_reorder_window, self._flush)
        else:
            self._spawn(job())
        return first

    def drop(self, delivery: Delivery) -> None:
        """Record that `delivery` was deliberately never sent."""
        self._record(delivery, attempt=0, copy=0, outcome="dropped")

    def _flush(self) -> None:
        self._flush_handle = None
        jobs, self._buffer = self._buffer, []
        self.dice.shuffle(jobs)
        for job in jobs:
            self._spawn(job())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_copies(
        self, delivery: Delivery, copies: int, concurrent: bool, delay: float, first: asyncio.Future[None]
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        if concurrent:
            await asyncio.gather(*(self._deliver(delivery, n, first) for n in range(copies)))
        else:
            for n in range(copies):
                await self._deliver(delivery, n, first)

    async def _deliver(self, delivery: Delivery, copy: int, first: asyncio.Future[None]) -> None:
        retries = self.policy.retries if delivery.retries is None else delivery.retries
        for attempt in range(1, retries + 2):
            status, error, duration = await self._attempt(delivery)
            ok = status is not None and 200 <= status < 300
            final = ok or attempt > retries
            outcome = "delivered" if ok else ("failed" if final else "retrying")
            self._record(delivery, attempt, copy, outcome, status=status, error=error, duration=duration)
            if not first.done():
                first.set_result(None)
            if final:
                return
            await asyncio.sleep(self.policy.delay(attempt, self.dice))

    async def _attempt(self, delivery: Delivery) -> tuple[int | None, str | None, float]:
        assert self._session is not None, "sender not open"
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        try:
            # encoded=True: send the URL byte for byte as the client gave it (no re-quoting of the query).
            async with self._session.request(
                delivery.method,
                URL(delivery.url, encoded=True),
                data=delivery.body,
                headers=delivery.headers(),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status, None, time.monotonic() - started
        except TimeoutError:
            return None, "timeout", time.monotonic() - started
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}", time.monotonic() - started

    def _record(self, delivery: Delivery, attempt: int, copy: int, outcome: str, **extra: Any) -> None:
        self.ledger.record_delivery(
            kind=delivery.kind,
            method=delivery.method,
            url=delivery.url,
            attempt=attempt,
            copy=copy,
            outcome=outcome,
            **delivery.ref,
            **extra,
        )
