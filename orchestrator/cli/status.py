"""`orchestrator status`: one batch as `key: value` lines, or a table of recent batches."""

from __future__ import annotations

import json
from typing import Any

import click

from orchestrator.cli import progress
from orchestrator.cli.api_client import Api, api_options
from orchestrator.cli.progress import JOB_STATES
from orchestrator.cli.watch import follow


def show_batch(batch: dict[str, Any]) -> None:
    """One batch as aligned `key: value` lines."""
    counts = batch.get("counts") or {}
    rows = [("batch", batch.get("id")), ("name", batch.get("name") or "-"), ("lane", batch.get("lane")),
            ("state", batch.get("state")), ("jobs", batch.get("total")),
            ("counts", ", ".join(f"{s} {counts[s]}" for s in JOB_STATES if counts.get(s)) or "-"),
            ("cost", f"{batch.get('cost') or 0:.4f} USD (estimated {batch.get('estimated_cost') or 0:.4f}"
                     + (f", cap {batch['max_cost_usd']:.4f}" if batch.get("max_cost_usd") is not None else "")
                     + ")"),
            ("held", f"{batch['held_by_budget']} job(s) by a budget cap" if batch.get("held_by_budget") else "-"),
            ("created", batch.get("created_at")),
            ("started", batch.get("started_at") or "-"), ("completed", batch.get("completed_at") or "-")]
    if batch.get("callback_url"):
        rows.insert(3, ("callback", batch["callback_url"]))
    if batch.get("schedule_id"):
        rows.insert(3, ("schedule", batch["schedule_id"]))
    if batch.get("catalog"):
        rows.append(("catalog", f"{batch['catalog'].get('catalog')}: {catalog_line(batch['catalog'])}"))
    for key, value in rows:
        click.echo(f"{key + ':':<11}{value}")


def catalog_line(summary: dict[str, Any]) -> str:
    """`read 5, new 1, changed 1, unchanged 3, removed 1, failed 0` from a catalog summary."""
    return ", ".join(f"{k} {summary.get(k, 0)}" for k in ("read", "new", "changed", "unchanged", "removed", "failed"))


@click.command("status")
@click.argument("batch_id", required=False)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="batches to list")
@click.option("--state", "states", multiple=True, help="only batches in this state; repeatable")
@click.option("--schedule", "schedule_id", default=None, help="only batches this schedule created")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@click.option("--watch", is_flag=True, help="keep it current until done: a progress bar for one batch, a live table")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="seconds between polls with --watch")
@api_options
def status(api: Api, batch_id: str | None, limit: int, states: tuple[str, ...], schedule_id: str | None,
           as_json: bool, watch: bool, interval: float) -> None:
    """Show one batch, or without BATCH_ID a table of recent batches."""
    if watch and as_json:
        raise click.UsageError("--watch and --json do not go together")
    if batch_id:
        batch = follow(api, batch_id, interval) if watch else api.json("GET", f"/v1/batches/{batch_id}")
        if as_json:
            click.echo(json.dumps(batch, indent=2))
        else:
            show_batch(batch)
        return
    params: dict[str, Any] = {"limit": limit}
    if states:
        params["state"] = ",".join(states)
    if schedule_id:
        params["schedule_id"] = schedule_id
    if watch:
        try:
            progress.watch_batches(lambda: api.json("GET", "/v1/batches", params=params).get("data") or [], interval)
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        return
    page = api.json("GET", "/v1/batches", params=params)
    if as_json:
        click.echo(json.dumps(page, indent=2))
    else:
        progress.show_batches(page.get("data") or [])
