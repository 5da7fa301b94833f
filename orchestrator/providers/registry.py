"""Build a provider adapter by name ("fal" or "runware")."""

from __future__ import annotations

import httpx

from orchestrator.providers._http import DEFAULT_TIMEOUT
from orchestrator.providers.base import ProviderAdapter
from orchestrator.providers.fal import DEFAULT_QUEUE_URL, FalAdapter
from orchestrator.providers.runware import DEFAULT_API_URL, RunwareAdapter

PROVIDERS = ("fal", "runware")
DEFAULT_BASE_URLS = {"fal": DEFAULT_QUEUE_URL, "runware": DEFAULT_API_URL}


def make_adapter(
    provider: str,
    *,
    api_key: str,
    base_url: str | None = None,
    client: httpx.Client | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> ProviderAdapter:
    """Return the adapter for `provider`; `base_url` None means the provider's public API."""
    url = base_url or DEFAULT_BASE_URLS.get(provider)
    if provider == "fal" and url:
        return FalAdapter(api_key, url, client, timeout=timeout)
    if provider == "runware" and url:
        return RunwareAdapter(api_key, url, client, timeout=timeout)
    raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
