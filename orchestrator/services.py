"""The services of one process, built one way for the API and the workers.

The database engine and session factory, the broker publisher, the storage backend, and the
provider adapters with the pooled HTTP client they share. Each is built on first use: a worker
process builds them after the fork (never at import time), and a process that never needs one
(the API has no use for the adapters) never opens it. The workers' context extends this with
what only workers need (workers/context.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import httpx
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import make_engine, make_session_factory
from orchestrator.providers import registry
from orchestrator.providers.base import ProviderAdapter
from orchestrator.queue import Publisher
from orchestrator.settings import Settings
from orchestrator.storage.base import Storage
from orchestrator.storage.factory import storage_from_url


@dataclass
class Services:
    """Everything a request or a task may need, created once per process."""

    settings: Settings
    _adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    # What close() releases, if it was built (each has dispose() or close()).
    POOLS: ClassVar[tuple[str, ...]] = ("engine", "http", "publisher")

    @cached_property
    def engine(self) -> Engine:
        """The database engine, with SQLAlchemy's default pool."""
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        """Session factory."""
        return make_session_factory(self.engine)

    @cached_property
    def publisher(self) -> Publisher:
        """Sends task messages (after commit, or at once)."""
        return Publisher(self.settings)

    @cached_property
    def storage(self) -> Storage:
        """The storage backend the settings name (local directory by default)."""
        s = self.settings
        return storage_from_url(s.resolved_storage_url, s3_endpoint_url=s.s3_endpoint_url,
                                secret_key=s.resolved_secret_key(), public_url=s.public_url)

    @cached_property
    def http(self) -> httpx.Client:
        """One pooled client for provider calls, downloads and uploads."""
        return httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0),
                            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))

    def adapter(self, provider: str) -> ProviderAdapter:
        """The adapter for a provider, sharing the pooled client."""
        if provider not in self._adapters:
            self._adapters[provider] = registry.from_settings(self.settings.provider(provider), client=self.http)
        return self._adapters[provider]

    def close(self) -> None:
        """Release the pools that were opened (process shutdown, tests)."""
        for name in self.POOLS:
            if name in self.__dict__:
                resource = self.__dict__.pop(name)
                getattr(resource, "dispose", getattr(resource, "close", lambda: None))()
        self.__dict__.pop("sessions", None)
