"""fal's Platform API prices: `GET <api>/v1/models/pricing?endpoint_id=...` with the account key.

Read by `orchestrator prices sync` (an operator command, never an API request or a worker's
hot path), which pins what it read into a price file for ORCH_PRICES; anything it cannot read
keeps the table's price. The answer is `{"prices": [{"endpoint_id", "unit_price", "unit",
"currency"}]}`; fal's FLUX image endpoints quote the price of one output megapixel (unit
`megapixels`, or `image` for a 1 MP image), so only those units and USD are taken.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

PER_MEGAPIXEL_UNITS = frozenset({"megapixels", "megapixel", "mp", "image", "images"})


class PricingUnavailable(Exception):
    """fal's pricing endpoint could not be read; the message says why (never the key)."""


@dataclass
class FalPricing:
    """A client with a small cache: one read per endpoint set and `ttl` seconds."""

    api_url: str
    key: str
    client: httpx.Client
    ttl: float = 3600.0
    _cache: dict[tuple[str, ...], tuple[float, dict[str, float]]] = field(default_factory=dict)

    def per_megapixel(self, endpoint_ids: Iterable[str]) -> dict[str, float]:
        """USD per output megapixel for the endpoints fal priced that way (others are left out)."""
        ids = tuple(sorted(set(endpoint_ids)))
        cached = self._cache.get(ids)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return dict(cached[1])
        try:
            resp = self.client.get(f"{self.api_url.rstrip('/')}/v1/models/pricing",
                                   params=[("endpoint_id", e) for e in ids],
                                   headers={"Authorization": f"Key {self.key}"}, timeout=10.0)
        except httpx.HTTPError as exc:
            raise PricingUnavailable(f"fal pricing API unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise PricingUnavailable(f"fal pricing API answered HTTP {resp.status_code}")
        prices = parse(_json(resp), ids)
        self._cache[ids] = (time.monotonic(), prices)
        return dict(prices)


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise PricingUnavailable("fal pricing API answered something that is not JSON") from None


def parse(body: Any, wanted: Iterable[str]) -> dict[str, float]:
    """The per-megapixel USD prices of `wanted` endpoints in a pricing answer."""
    if not isinstance(body, dict) or not isinstance(body.get("prices"), list):
        raise PricingUnavailable("fal pricing API answer has no prices list")
    want = set(wanted)
    out: dict[str, float] = {}
    for item in body["prices"]:
        if not isinstance(item, dict) or item.get("endpoint_id") not in want:
            continue
        price, unit, currency = item.get("unit_price"), str(item.get("unit", "")).lower(), item.get("currency")
        if (isinstance(price, int | float) and not isinstance(price, bool) and 0 <= price <= 100
                and unit in PER_MEGAPIXEL_UNITS and currency in ("USD", None)):
            out[str(item["endpoint_id"])] = float(price)
    return out
