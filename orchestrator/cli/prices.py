"""`orchestrator prices show` (the table in use) and `prices sync` (pin fal's Platform API prices)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.group("prices")
def prices_group() -> None:
    """The price table: show it, or sync fal's prices into a price file for ORCH_PRICES."""


@prices_group.command("show")
def prices_show() -> None:
    """The prices in use (defaults with ORCH_PRICES applied), USD per output megapixel."""
    from orchestrator import pricing
    from orchestrator.settings import get_settings

    click.echo(f"{'MODEL':<44} {'PROVIDER':<8} {'USD/MP':>8}  RULE")
    for row in pricing.table_json(get_settings().price_table()):
        click.echo(f"{row['model']:<44} {row['provider']:<8} {row['usd_per_megapixel']:>8g}  "
                   f"{row['megapixel_rounding']} ({row['source']})")


@prices_group.command("sync")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="price file to write (then set ORCH_PRICES to its path)")
def prices_sync(output: Path) -> None:
    """Read fal's prices from its Platform API (ORCH_FAL_API_URL, with FAL_KEY) into a price file.

    Overrides already in ORCH_PRICES are kept for every model fal does not price; a model fal does
    not price keeps the table's price. Nothing is written when fal cannot be read.
    """
    import httpx

    from orchestrator import catalog
    from orchestrator.providers.fal.parse import PROVIDER
    from orchestrator.providers.fal.pricing import FalPricing, PricingUnavailable
    from orchestrator.settings import get_settings

    settings = get_settings()
    account = settings.provider(PROVIDER)
    if not account.api_key:
        raise click.ClickException("FAL_KEY is not set: fal's pricing API needs the account key")
    fal_models = [m.id for m in catalog.MODELS.values() if m.provider == PROVIDER]  # the ones fal prices
    table = settings.price_table()
    try:
        with httpx.Client() as http:
            live = FalPricing(account.pricing_url, account.api_key, http).per_megapixel(fal_models)
    except PricingUnavailable as exc:
        raise click.ClickException(f"{exc}; the price table is unchanged") from None
    pinned: dict[str, Any] = {m: {"usd_per_mp": str(p.usd_per_mp), "rounding": p.rounding} for m, p in table.items()}
    for model, usd in live.items():
        pinned[model] = {"usd_per_mp": str(usd), "rounding": "ceil"}
        was = float(table[model].usd_per_mp)
        click.echo(f"{model}: {was:g} -> {usd:g} USD/MP" if was != usd else f"{model}: {usd:g} USD/MP (unchanged)")
    for model in sorted(set(fal_models) - set(live)):
        click.echo(f"{model}: not priced per megapixel by fal; keeps {float(table[model].usd_per_mp):g} USD/MP")
    output.write_text(json.dumps(pinned, indent=2) + "\n")
    click.echo(f"wrote {output}: set ORCH_PRICES={output}")


def register(main: click.Group) -> None:
    """Attach the price commands."""
    main.add_command(prices_group)
