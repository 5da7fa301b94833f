"""The price table: fal's per-megapixel rounding, Runware's pro-rata estimate, overrides, estimates."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator import catalog, pricing
from orchestrator.pricing import DEFAULT_PRICES, PriceError, load_prices
from orchestrator.settings import Settings


def params(model: str, width: int, height: int, n: int = 1) -> dict[str, object]:
    return catalog.normalize(catalog.MODELS[model], {"prompt": "x y", "width": width, "height": height,
                                                      "num_images": n})


@pytest.mark.parametrize(("width", "height", "megapixels"), [
    (1024, 1024, 1),   # fal quotes 1024x1024 as exactly one unit: one megapixel is 1024*1024 pixels
    (512, 512, 1),     # less than one megapixel still bills one
    (1024, 768, 1),
    (1025, 1024, 2),   # one pixel over rounds up
    (1920, 1080, 2),   # 1.98 MP
    (1536, 1536, 3),   # 2.25 MP
    (2048, 2048, 4),
])
def test_fal_rounds_each_image_up_to_whole_megapixels(width: int, height: int, megapixels: int) -> None:
    price = DEFAULT_PRICES["fal-ai/flux/dev"]
    assert price.megapixels(width, height) == megapixels
    assert price.image(width, height) == Decimal("0.025") * megapixels


def test_public_fal_prices_per_megapixel() -> None:
    one = {m: DEFAULT_PRICES[m].image(1024, 1024) for m in ("fal-ai/flux/schnell", "fal-ai/flux/dev",
                                                            "fal-ai/flux-lora")}
    assert one == {"fal-ai/flux/schnell": Decimal("0.003"), "fal-ai/flux/dev": Decimal("0.025"),
                   "fal-ai/flux-lora": Decimal("0.035")}


def test_rounding_is_per_image_not_per_job() -> None:
    # Two 1.25 MP images are 2 + 2 billed megapixels, not ceil(2.5) = 3.
    p = params("fal-ai/flux/schnell", 1280, 1024, n=2)
    assert pricing.job_cost(DEFAULT_PRICES, "fal-ai/flux/schnell", p) == Decimal("0.012")
    assert pricing.job_megapixels(DEFAULT_PRICES, "fal-ai/flux/schnell", p) == 4


def test_runware_estimate_is_pro_rata_to_the_millionth() -> None:
    price = DEFAULT_PRICES["runware:100@1"]
    assert price.image(1024, 1024) == Decimal("0.0013")
    assert price.image(512, 512) == Decimal("0.000325")
    assert price.image(768, 512) == Decimal("0.000488")  # 0.0004875 rounds half up


def test_overrides_from_json_and_from_a_file(tmp_path: Path) -> None:
    table = load_prices('{"rundiffusion-fal/juggernaut-flux/lightning": 0.01, '
                        '"runware:100@1": {"usd_per_mp": "0.002", "rounding": "ceil"}}')
    assert table["rundiffusion-fal/juggernaut-flux/lightning"].image(1024, 1024) == Decimal("0.01")
    assert table["runware:100@1"].image(512, 512) == Decimal("0.002")  # now rounded up like fal
    assert table["fal-ai/flux/dev"] == DEFAULT_PRICES["fal-ai/flux/dev"]  # the rest keep their defaults
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"fal-ai/flux/dev": 0.02}))
    assert load_prices(str(path))["fal-ai/flux/dev"].usd_per_mp == Decimal("0.02")
    assert Settings(prices=str(path)).price_table()["fal-ai/flux/dev"].usd_per_mp == Decimal("0.02")


@pytest.mark.parametrize(("setting", "message"), [
    ('{"fal-ai/flux/pro": 0.05}', "unknown model 'fal-ai/flux/pro'"),
    ('{"fal-ai/flux/dev": -1}', "ORCH_PRICES['fal-ai/flux/dev']: must be between 0 and 100"),
    ('{"fal-ai/flux/dev": "cheap"}', "'cheap' is not a number"),
    ('{"fal-ai/flux/dev": true}', "must be a number of USD per megapixel"),
    ('{"fal-ai/flux/dev": {"usd_per_mp": 0.1, "rounding": "floor"}}', "rounding: must be ceil or exact"),
    ('{"fal-ai/flux/dev": {"price": 0.1}}', "give usd_per_mp"),
    ('{"fal-ai/flux/dev": 0.1', "ORCH_PRICES: invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ("/nonexistent/prices.json", "cannot read price file /nonexistent/prices.json"),
])
def test_invalid_prices_are_refused_with_a_clear_message(setting: str, message: str) -> None:
    with pytest.raises(PriceError, match=None) as info:
        load_prices(setting)
    assert message in str(info.value)
    with pytest.raises(ValidationError) as settings_error:
        Settings(prices=setting)
    assert message in str(settings_error.value)


def test_alias_estimate_covers_a_dearer_failover() -> None:
    p = params("fal-ai/flux/dev", 1024, 1024)
    direct = pricing.estimate_job(DEFAULT_PRICES, "fal-ai/flux/dev", "fal-ai/flux/dev", p)
    assert direct.cost == direct.min_cost == direct.max_cost == Decimal("0.025")
    alias = pricing.estimate_job(DEFAULT_PRICES, "flux-dev", "fal-ai/flux/dev", p)
    assert (alias.cost, alias.min_cost, alias.max_cost) == (Decimal("0.025"), Decimal("0.0038"), Decimal("0.025"))
    cheap = load_prices('{"runware:100@1": 0.01}')
    s = params("fal-ai/flux/schnell", 1024, 1024)
    up = pricing.estimate_job(cheap, "flux-schnell", "fal-ai/flux/schnell", s)
    assert (up.cost, up.max_cost) == (Decimal("0.003"), Decimal("0.01"))


def test_summary_per_model() -> None:
    jobs = [("fal-ai/flux/schnell", params("fal-ai/flux/schnell", 1024, 1024, 2)),
            ("fal-ai/flux/schnell", params("fal-ai/flux/schnell", 1536, 1024)),
            ("runware:100@1", params("runware:100@1", 1024, 1024, 3))]
    summary = pricing.summarize(pricing.estimate_job(DEFAULT_PRICES, m, m, p) for m, p in jobs)
    assert summary["jobs"] == 3 and summary["images"] == 6
    assert summary["estimated_cost"] == pytest.approx(0.003 * 2 + 0.006 + 0.0013 * 3)
    assert summary["megapixels"] == 2 + 2 + 3
    assert [(r["model"], r["jobs"], r["images"]) for r in summary["by_model"]] == [
        ("fal-ai/flux/schnell", 2, 3), ("runware:100@1", 1, 3)]
