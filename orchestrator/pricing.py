"""The price table: what one image of a model costs, and what a job or a batch will cost.

Rules (README "Cost"):
- fal bills per output megapixel. fal's model pages say "Images are billed by rounding up to the
  nearest megapixel", and fal quotes a 1024x1024 image as exactly one unit of the per-MP price, so
  one megapixel here is 1024 x 1024 = 1,048,576 pixels and each image is billed
  ceil(width * height / 1,048,576) megapixels (at least one).
- Runware reports the cost of every image (`includeCost`, always sent); that figure is recorded
  as it is. The table's Runware prices (pro rata per megapixel, no rounding) only estimate before
  submit and price an image Runware did not report.
- Every price can be overridden (ORCH_PRICES: JSON, or the path of a JSON file), since contracts
  differ. The Juggernaut Lightning price on fal is not public: the default is a placeholder.

Pure functions of their inputs; amounts are Decimals rounded to millionths of a dollar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from orchestrator import catalog
from orchestrator.providers import registry

MEGAPIXEL = 1024 * 1024
MICRO = Decimal("0.000001")
Rounding = Literal["ceil", "exact"]


@dataclass(frozen=True)
class Price:
    """The price of one megapixel of output of one model, and how megapixels are counted."""

    usd_per_mp: Decimal
    rounding: Rounding

    def megapixels(self, width: int, height: int) -> Decimal:
        """Billed megapixels of one image."""
        if self.rounding == "ceil":
            return Decimal(max(1, math.ceil(width * height / MEGAPIXEL)))
        return Decimal(width * height) / MEGAPIXEL

    def image(self, width: int, height: int) -> Decimal:
        """The cost of one image of this size."""
        return usd(self.usd_per_mp * self.megapixels(width, height))


def usd(amount: Decimal) -> Decimal:
    """An amount rounded to the stored precision (millionths of a dollar)."""
    return amount.quantize(MICRO, rounding=ROUND_HALF_UP)


def _p(value: str, rounding: Rounding) -> Price:
    return Price(Decimal(value), rounding)


DEFAULT_PRICES: Mapping[str, Price] = {
    # fal's public prices (2026), per output megapixel, rounded up per image.
    "fal-ai/flux/schnell": _p("0.003", "ceil"),
    "fal-ai/flux/dev": _p("0.025", "ceil"),
    "fal-ai/flux-lora": _p("0.035", "ceil"),
    # Not public: a placeholder at the FLUX [dev] price. Set your contract's price in ORCH_PRICES.
    "rundiffusion-fal/juggernaut-flux/lightning": _p("0.025", "ceil"),
    # Runware reports each image's cost; these estimate it (pro rata per megapixel).
    "runware:100@1": _p("0.0013", "exact"),
    "runware:101@1": _p("0.0038", "exact"),
    "rundiffusion:130@100": _p("0.0040", "exact"),
}


class PriceError(ValueError):
    """An invalid price override; the message names the model and what is wrong."""


def load_prices(setting: str) -> dict[str, Price]:
    """The default table with ORCH_PRICES applied: JSON text, or the path of a JSON file.

    Each entry is `"<model id>": <USD per megapixel>` or `{"usd_per_mp": <n>, "rounding": "ceil"|"exact"}`;
    the rounding defaults to the provider's rule (fal: ceil, Runware: exact).
    """
    table = dict(DEFAULT_PRICES)
    text = setting.strip()
    if not text:
        return table
    if not text.startswith(("{", "[")):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PriceError(f"ORCH_PRICES: cannot read price file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceError(f"ORCH_PRICES: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise PriceError("ORCH_PRICES: must be a JSON object of model id -> price")
    for model, entry in data.items():
        table[model] = _entry(model, entry)
    return table


def _entry(model: str, entry: Any) -> Price:
    spec = catalog.MODELS.get(model)
    if spec is None:
        raise PriceError(f"ORCH_PRICES: unknown model {model!r}; known models: {', '.join(catalog.MODELS)}")
    default: Rounding = registry.capabilities(spec.provider).price_rounding
    raw, rounding = entry, default
    if isinstance(entry, dict):
        unknown = set(entry) - {"usd_per_mp", "rounding"}
        if unknown or "usd_per_mp" not in entry:
            raise PriceError(f"ORCH_PRICES[{model!r}]: give usd_per_mp and optionally rounding (ceil or exact)")
        raw, rounding = entry["usd_per_mp"], entry.get("rounding", default)
        if rounding not in ("ceil", "exact"):
            raise PriceError(f"ORCH_PRICES[{model!r}].rounding: must be ceil or exact, not {rounding!r}")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise PriceError(f"ORCH_PRICES[{model!r}]: the price must be a number of USD per megapixel")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise PriceError(f"ORCH_PRICES[{model!r}]: {raw!r} is not a number") from None
    if not value.is_finite() or value < 0 or value > 100:
        raise PriceError(f"ORCH_PRICES[{model!r}]: must be between 0 and 100 USD per megapixel, not {raw}")
    return Price(value, rounding)


def job_cost(prices: Mapping[str, Price], model: str, params: Mapping[str, Any]) -> Decimal:
    """The table price of a job: its images at its size."""
    price = prices[model]
    return usd(price.image(int(params["width"]), int(params["height"])) * int(params.get("num_images", 1)))


def job_megapixels(prices: Mapping[str, Price], model: str, params: Mapping[str, Any]) -> Decimal:
    """Billed megapixels of a job (all its images)."""
    mp = prices[model].megapixels(int(params["width"]), int(params["height"]))
    return mp * int(params.get("num_images", 1))


@dataclass(frozen=True)
class JobEstimate:
    """What one job should cost on its first model, and at worst if it fails over."""

    provider: str
    model: str
    images: int
    megapixels: Decimal
    cost: Decimal
    max_cost: Decimal
    min_cost: Decimal


def estimate_job(prices: Mapping[str, Price], requested: str, model: str, params: Mapping[str, Any]) -> JobEstimate:
    """Estimate a validated job; a family alias may fail over, so its range covers the other model."""
    cost = job_cost(prices, model, params)
    low = high = cost
    other = catalog.fallback_model(requested, model)
    if other is not None:
        try:
            moved = catalog.for_fallback(params, other)
        except catalog.CatalogError:
            moved = None  # cannot fail over: the range is the first model's price
        if moved is not None:
            alt = job_cost(prices, other.id, moved)
            low, high = min(cost, alt), max(cost, alt)
    return JobEstimate(catalog.MODELS[model].provider, model, int(params.get("num_images", 1)),
                       job_megapixels(prices, model, params), cost, high, low)


def summarize(estimates: Iterable[JobEstimate]) -> dict[str, Any]:
    """The estimate of a batch: totals and one row per provider and model."""
    rows: dict[tuple[str, str], list[JobEstimate]] = {}
    for e in estimates:
        rows.setdefault((e.provider, e.model), []).append(e)
    every = [e for group in rows.values() for e in group]

    def total(group: list[JobEstimate], attr: str) -> Decimal:
        return sum((getattr(e, attr) for e in group), Decimal(0))

    return {
        "jobs": len(every), "images": sum(e.images for e in every), "megapixels": _num(total(every, "megapixels")),
        "estimated_cost": float(total(every, "cost")),
        "cost_range": {"min": float(total(every, "min_cost")), "max": float(total(every, "max_cost"))},
        "by_model": [{"provider": p, "model": m, "jobs": len(g), "images": sum(e.images for e in g),
                      "megapixels": _num(total(g, "megapixels")), "cost": float(total(g, "cost"))}
                     for (p, m), g in sorted(rows.items())],
        "currency": "USD",
    }


def _num(value: Decimal) -> float:
    return float(round(value, 4))


def table_json(prices: Mapping[str, Price]) -> list[dict[str, Any]]:
    """The price table as the API and README show it."""
    return [{"model": m, "provider": catalog.MODELS[m].provider, "usd_per_megapixel": float(p.usd_per_mp),
             "megapixel_rounding": "ceil per image" if p.rounding == "ceil" else "pro rata",
             "source": _source(catalog.MODELS[m].provider)}
            for m, p in prices.items()]


def _source(provider: str) -> str:
    """Where a job's recorded cost comes from."""
    return "reported by the provider" if registry.capabilities(provider).reports_cost else "price table"
