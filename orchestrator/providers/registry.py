"""The providers we talk to, by name: their adapters and what they can do.

A new provider is its own package (`providers/<name>/` with an adapter class like FalAdapter)
plus one entry in `_ADAPTERS`; the rest of the orchestrator asks this module, never compares
provider names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from orchestrator.providers._http import DEFAULT_TIMEOUT
from orchestrator.providers.base import Capabilities, ProviderAdapter, ProviderSettings
from orchestrator.providers.fal.adapter import FalAdapter
from orchestrator.providers.runware.adapter import RunwareAdapter

if TYPE_CHECKING:
    from orchestrator.catalog import ModelSpec

AdapterClass = type[FalAdapter] | type[RunwareAdapter]
_ADAPTERS: Mapping[str, AdapterClass] = {cls.name: cls for cls in (FalAdapter, RunwareAdapter)}
PROVIDERS: tuple[str, ...] = tuple(_ADAPTERS)


def adapter_class(provider: str) -> AdapterClass:
    """The adapter class of `provider`; its class-level answers need no account."""
    try:
        return _ADAPTERS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}") from None


def capabilities(provider: str) -> Capabilities:
    """What `provider` can do (see base.Capabilities)."""
    return adapter_class(provider).capabilities


def providers_with(**flags: Any) -> tuple[str, ...]:
    """The providers whose capabilities have these values, e.g. `providers_with(knows_our_task_id=True)`."""
    unknown = set(flags) - set(Capabilities.__dataclass_fields__)
    if unknown:
        raise TypeError(f"no such capability: {', '.join(sorted(unknown))}")
    return tuple(p for p, cls in _ADAPTERS.items()
                 if all(getattr(cls.capabilities, flag) == value for flag, value in flags.items()))


def webhook_headers() -> tuple[str, ...]:
    """Every header some provider's webhooks carry that the receiver keeps (any provider's path)."""
    return tuple(dict.fromkeys(h for cls in _ADAPTERS.values() for h in cls.webhook_headers))


def build_payload(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request body of stored (normalized) parameters, for the provider of `spec`."""
    return adapter_class(spec.provider).build_payload(spec, params)


def make_adapter(
    provider: str,
    *,
    api_key: str,
    base_url: str | None = None,
    client: httpx.Client | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> ProviderAdapter:
    """Return the adapter for `provider`; `base_url` None means the provider's public API."""
    cls = adapter_class(provider)
    return cls(api_key, base_url or cls.DEFAULT_BASE_URL, client, timeout=timeout)


def from_settings(settings: ProviderSettings, client: httpx.Client | None = None) -> ProviderAdapter:
    """The adapter for one configured provider account (`Settings.provider(name)`)."""
    return adapter_class(settings.name).from_settings(settings, client)
