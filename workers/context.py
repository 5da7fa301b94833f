"""Per-process resources for tasks: the process's services (orchestrator.services) sized for a
worker, plus what only workers use (counters, guarded HTTP clients, the submit pool).

Built lazily on first use in each worker process (after the fork), never at import time.

A unit of work (`Context.session()`) acts on its transaction's consequences once it has
committed (see orchestrator.outbox): a freed slot is refilled at once by this same thread
(claim and submit, no broker message), a job due later gets a timed claim nudge, and a finished
batch its completion notice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import httpx
from celery import current_app
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from orchestrator import metrics, outbox, queue
from orchestrator.db import make_engine, session_scope
from orchestrator.models import Asset, Job
from orchestrator.netpolicy import AddressPolicy, guarded_client
from orchestrator.services import Services
from orchestrator.settings import get_settings

log = logging.getLogger(__name__)
# Nudges scheduled in the broker stay far below Redis's visibility timeout (see queue.py).
MAX_COUNTDOWN = 300.0
TALLY_FLUSH_SECONDS = 1.0
SlotHandler = Callable[["Context", str], None]
StoreHandler = Callable[["Context", uuid.UUID, "tuple[Job, list[Asset]] | None"], None]
_slot_handlers: list[SlotHandler] = []
_store_handlers: list[StoreHandler] = []


def on_slot_freed(handler: SlotHandler) -> SlotHandler:
    """Register what a worker does when its transaction freed a provider slot (dispatch.refill)."""
    _slot_handlers.append(handler)
    return handler


def on_results_arrived(handler: StoreHandler) -> StoreHandler:
    """Register what a worker does when its transaction moved a job to storing (store.store_now)."""
    _store_handlers.append(handler)
    return handler


@dataclass
class Context(Services):
    """Everything a task needs, created once per process."""

    _local: threading.local = field(default_factory=threading.local)
    _flusher: threading.Thread | None = None
    POOLS: ClassVar[tuple[str, ...]] = ("engine", "http", "callback_http", "download_http", "publisher")

    @cached_property
    def engine(self) -> Engine:
        """The process's engine: one pooled connection per worker thread, kept open.

        A pool smaller than the threads opens and closes connections all the time; a connection
        per thread (plus a few for the metrics flusher and stragglers) is reused for good.
        """
        threads = max(self.settings.worker_concurrency, int(current_app.conf.worker_concurrency or 0))
        return make_engine(self.settings.resolved_database_url, pool_size=threads + 2, max_overflow=2)

    @cached_property
    def tally(self) -> metrics.Tally:
        """Counters aggregated in memory and flushed to the counters table every second."""
        self._start_flusher()
        return metrics.Tally()

    @cached_property
    def submit_pool(self) -> ThreadPoolExecutor:
        """Threads for the concurrent provider calls of one claim round (HTTP only, no database)."""
        return ThreadPoolExecutor(max_workers=16, thread_name_prefix="submit")

    @cached_property
    def callback_http(self) -> httpx.Client:
        """The client for tenants' callback URLs: connects only to addresses the policy allows."""
        return guarded_client(AddressPolicy(self.settings.callback_allow_private),
                              httpx.Timeout(15.0, connect=5.0))

    @cached_property
    def download_http(self) -> httpx.Client:
        """The client for provider image URLs (allow-listed hosts), under the same address policy."""
        return guarded_client(AddressPolicy(self.settings.download_allow_private),
                              httpx.Timeout(30.0, connect=10.0))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short unit of work; its transaction's consequences follow the commit."""
        with session_scope(self.sessions) as s:
            yield s
        box = outbox.take(s)
        if box:
            self._follow(box)

    def _follow(self, box: outbox.Outbox) -> None:
        for batch_id in sorted(box.finished):
            self.publisher.send(queue.NOTIFY_BATCH, str(batch_id))
        now = set(box.freed) | {provider for provider, delay in box.due.items() if delay <= 0}
        for provider, delay in sorted(box.due.items()):
            if delay > 0:
                self.publisher.send(queue.DISPATCH, provider, countdown=min(MAX_COUNTDOWN, delay))
        if not _slot_handlers:  # a process without dispatch loaded: leave it to a worker
            for provider in sorted(now):
                self.publisher.send(queue.DISPATCH, provider)
        elif now:
            self._refill(now)  # keep the provider pipe full first ...
        for job_id in sorted(box.storing):  # ... then copy the images out
            if not _store_handlers:
                self.publisher.send(queue.STORE_JOB, str(job_id))
            for handler in _store_handlers:
                handler(self, job_id, box.storing[job_id])

    def _refill(self, providers: set[str]) -> None:
        """Run the slot handlers now; a refill freeing more slots is queued, not nested."""
        pending: set[str] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.update(providers)
            return
        self._local.pending = pending = set(providers)
        try:
            while pending:
                provider = min(pending)
                pending.discard(provider)
                try:
                    for handler in _slot_handlers:
                        handler(self, provider)
                except Exception:  # the freeing work is committed; a nudge retries the claim
                    log.exception("refill failed", extra={"provider": provider})
                    self.publisher.send(queue.DISPATCH, provider)
        finally:
            self._local.pending = None

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="tally-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(TALLY_FLUSH_SECONDS)
            self.flush_tally()

    def flush_tally(self) -> None:
        """Write the in-memory counters to the database (kept for the next try if that fails)."""
        tally = self.__dict__.get("tally")
        if tally is None:
            return
        drained = tally.drain()
        if not drained:
            return
        try:
            with session_scope(self.sessions) as s:
                metrics.add_all(s, drained)
        except Exception:
            tally.restore(drained)
            log.warning("metrics flush failed; will retry")

    def close(self) -> None:
        """Release pools (worker shutdown, tests)."""
        self.flush_tally()
        if "submit_pool" in self.__dict__:
            self.__dict__.pop("submit_pool").shutdown(wait=False)
        super().close()


_context: Context | None = None


def ctx() -> Context:
    """This process's context."""
    global _context
    if _context is None:
        _context = Context(get_settings())
    return _context


def set_context(context: Context | None) -> None:
    """Install a context (tests, embedded mode) or drop it after a fork."""
    global _context
    _context = context
