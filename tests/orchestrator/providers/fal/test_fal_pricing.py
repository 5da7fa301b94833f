"""fal's Platform API prices: the sandbox serves them, `orchestrator prices sync` pins them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import main
from orchestrator.netutil import free_port
from orchestrator.providers.fal.pricing import FalPricing, PricingUnavailable, parse
from orchestrator.sandbox import FAL_DEV_KEY, FalConfig, FalSandbox
from orchestrator.sandbox.fal.config import FAL_PRICES
from orchestrator.settings import Settings, get_settings


@pytest.fixture(scope="module")
def fal() -> Iterator[FalSandbox]:
    prices = {**FAL_PRICES, "fal-ai/flux/schnell": 0.004}
    prices.pop("rundiffusion-fal/juggernaut-flux/lightning")  # not priced by "fal": keeps the table's
    with FalSandbox(FalConfig(keys=(FAL_DEV_KEY,), prices=prices)) as sandbox:
        yield sandbox


def run(args: list[str], env: dict[str, str]) -> Result:
    get_settings.cache_clear()  # the command reads the settings once per process
    try:
        return CliRunner().invoke(main, args, env=env)
    finally:
        get_settings.cache_clear()


def test_sync_pins_fal_prices_into_a_price_file(fal: FalSandbox, tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    result = run(["prices", "sync", "--output", str(out)],
                 {"ORCH_FAL_API_URL": fal.url, "FAL_KEY": FAL_DEV_KEY, "ORCH_PRICES": '{"runware:100@1": 0.002}'})
    assert result.exit_code == 0, result.output
    assert "fal-ai/flux/schnell: 0.003 -> 0.004 USD/MP" in result.output
    assert "fal-ai/flux/dev: 0.025 USD/MP (unchanged)" in result.output
    assert "juggernaut-flux/lightning: not priced per megapixel by fal" in result.output
    assert FAL_DEV_KEY not in result.output
    table = Settings(prices=str(out)).price_table()
    assert table["fal-ai/flux/schnell"].image(1024, 1024) == Decimal("0.004")
    assert table["fal-ai/flux/schnell"].megapixels(1025, 1024) == 2  # still rounded up
    assert table["runware:100@1"].usd_per_mp == Decimal("0.002")  # an existing override is kept
    shown = run(["prices", "show"], {"ORCH_PRICES": str(out)})
    assert shown.exit_code == 0 and "0.004" in shown.output and "ceil per image" in shown.output


@pytest.mark.parametrize(("env", "words"), [
    ({"FAL_KEY": "someone:else"}, "HTTP 401"),
    ({"FAL_KEY": ""}, "FAL_KEY is not set"),
    ({"FAL_KEY": FAL_DEV_KEY, "ORCH_FAL_API_URL": f"http://127.0.0.1:{free_port()}"}, "unreachable"),
])
def test_sync_writes_nothing_when_fal_cannot_be_read(fal: FalSandbox, tmp_path: Path, env: dict[str, str],
                                                     words: str) -> None:
    out = tmp_path / "prices.json"
    result = run(["prices", "sync", "--output", str(out)], {"ORCH_FAL_API_URL": fal.url, **env})
    assert result.exit_code == 1 and words in result.output and not out.exists(), result.output
    if "FAL_KEY" not in words:
        assert "the price table is unchanged" in result.output
    assert "someone:else" not in result.output


def test_client_caches_and_takes_only_per_megapixel_usd(fal: FalSandbox) -> None:
    calls: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: calls.append(str(r.url))]}) as http:
        client = FalPricing(fal.url, FAL_DEV_KEY, http)
        first = client.per_megapixel(["fal-ai/flux/dev", "fal-ai/flux/schnell"])
        again = client.per_megapixel(["fal-ai/flux/schnell", "fal-ai/flux/dev"])
    assert first == again == {"fal-ai/flux/dev": 0.025, "fal-ai/flux/schnell": 0.004}
    assert len(calls) == 1 and "endpoint_id=fal-ai%2Fflux%2Fdev" in calls[0]
    body = {"prices": [{"endpoint_id": "a", "unit_price": 0.1, "unit": "second", "currency": "USD"},
                       {"endpoint_id": "b", "unit_price": 0.1, "unit": "image", "currency": "EUR"},
                       {"endpoint_id": "c", "unit_price": True, "unit": "image"},
                       {"endpoint_id": "d", "unit_price": 0.02, "unit": "image", "currency": "USD"}]}
    assert parse(body, ["a", "b", "c", "d"]) == {"d": 0.02}
    with pytest.raises(PricingUnavailable, match="no prices list"):
        parse({"detail": "x"}, ["a"])
    assert json.dumps(first)  # plain floats
