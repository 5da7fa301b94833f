"""Per-process resources for tasks: settings, database, broker publisher, adapters, storage.

Built lazily on first use in each worker process (after the fork), never at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import httpx
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import queue, state
from orchestrator.db import make_engine, make_session_factory, session_scope
from orchestrator.netpolicy import AddressPolicy, guarded_client
from orchestrator.providers.base import ProviderAdapter
from orchestrator.providers.registry import make_adapter
from orchestrator.queue import Publisher
from orchestrator.settings import Settings, get_settings
from orchestrator.storage.base import Storage
from orchestrator.storage.factory import storage_from_url


@dataclass
class Context:
    """Everything a task needs, created once per process."""

    settings: Settings
    _adapters: dict[str, ProviderAdapter] = field(default_factory=dict)

    @cached_property
    def engine(self) -> Engine:
        """The process's engine (small pool: tasks run one at a time per process)."""
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory."""
        return make_session_factory(self.engine)

    @cached_property
    def publisher(self) -> Publisher:
        """Sends follow-up task messages after commit."""
        return Publisher(self.settings)

    @cached_property
    def http(self) -> httpx.Client:
        """One pooled client for provider calls, downloads and uploads."""
        return httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0),
                            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))

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

    @cached_property
    def storage(self) -> Storage:
        """The configured storage backend."""
        s = self.settings
        return storage_from_url(s.resolved_storage_url, s3_endpoint_url=s.s3_endpoint_url,
                                secret_key=s.resolved_secret_key(), public_url=s.public_url)

    def adapter(self, provider: str) -> ProviderAdapter:
        """The adapter for a provider, sharing the pooled client."""
        if provider not in self._adapters:
            s = self.settings
            key = s.fal_key if provider == "fal" else s.runware_api_key
            base = s.fal_queue_url if provider == "fal" else s.runware_api_url
            self._adapters[provider] = make_adapter(provider, api_key=key.get_secret_value(), base_url=base,
                                                    client=self.http)
        return self._adapters[provider]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short unit of work."""
        with session_scope(self.sessions) as s:
            yield s
            for batch_id in state.finished_batches(s):
                self.publisher.after_commit(s, queue.NOTIFY_BATCH, str(batch_id))

    def close(self) -> None:
        """Release pools (worker shutdown, tests)."""
        for name in ("engine", "http", "callback_http", "download_http", "publisher"):
            if name in self.__dict__:
                resource = self.__dict__.pop(name)
                getattr(resource, "dispose", getattr(resource, "close", lambda: None))()
        self.__dict__.pop("sessions", None)


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
