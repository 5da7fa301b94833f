"""`submit --estimate` and the estimate shown before large submissions (a dry run over HTTP)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from orchestrator.cli.api_client import Api
    from orchestrator.cli.submit import Submission


def with_options(sub: Submission, **options: Any) -> Submission:
    """The same submission with batch options added (JSON body fields, or JSONL query parameters)."""
    options = {k: v for k, v in options.items() if v is not None}
    if not options:
        return sub
    if sub.content_type == "application/json":
        return replace(sub, body=json.dumps({**json.loads(sub.body), **options}).encode())
    return replace(sub, params={**sub.params, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                                 for k, v in options.items()}})


def job_count(sub: Submission) -> int:
    """How many jobs the submission expands to, counted locally (the API checks it again)."""
    if sub.content_type != "application/json":
        return sum(1 for line in sub.body.decode("utf-8", "replace").splitlines() if line.strip())
    body = json.loads(sub.body)
    if "catalog" in body:
        return len(body["catalog"].get("rows") or [])
    if "matrix" in body:
        m = body["matrix"]
        seeds = len(m["seeds"]) if m.get("seeds") else (m.get("variants") or 1)
        return len(m.get("prompts") or []) * seeds * len(m.get("sizes") or [None]) * len(m.get("styles") or [None])
    return len(body.get("items") or [])


def fetch(api: Api, sub: Submission) -> dict[str, Any]:
    """POST the batch as a dry run: validated exactly as a submit, nothing written."""
    dry = with_options(sub, dry_run=True)
    return api.json("POST", "/v1/batches", content=dry.body, params=dry.params,
                    headers={"Content-Type": dry.content_type})


def show(est: dict[str, Any]) -> None:
    """The estimate as a table: one row per provider and model, then the totals and the budget."""
    click.echo(f"{'PROVIDER':<9} {'MODEL':<44} {'JOBS':>6} {'IMAGES':>7} {'MP':>9} {'USD':>10}")
    for row in est.get("by_model") or []:
        click.echo(f"{row['provider']:<9} {row['model']:<44} {row['jobs']:>6} {row['images']:>7} "
                   f"{row['megapixels']:>9g} {row['cost']:>10.4f}")
    click.echo(f"{'total':<54} {est['jobs']:>6} {est['images']:>7} {est['megapixels']:>9g} "
               f"{est['estimated_cost']:>10.4f}")
    low, high = est["cost_range"]["min"], est["cost_range"]["max"]
    if low != high:
        click.echo(f"range if aliases fail over to the other provider: {low:.4f} to {high:.4f} USD")
    b = est.get("budget") or {}
    caps = [f"{name} cap {b[key]:.4f} (spent {b[spent]:.4f})" for name, key, spent in
            (("daily", "daily_usd", "spent_today_usd"), ("monthly", "monthly_usd", "spent_this_month_usd"))
            if b.get(key) is not None]
    if b.get("max_cost_usd") is not None:
        caps.append(f"batch cap {b['max_cost_usd']:.4f}")
    if caps:
        click.echo("budget: " + "; ".join(caps) + f" ({b.get('timezone', 'UTC')})")


def confirm_large(api: Api, sub: Submission, threshold: int) -> None:
    """Above `threshold` jobs, show the estimate first; ask on a terminal, just inform otherwise."""
    count = job_count(sub)
    if count <= threshold:
        return
    click.echo(f"{count} jobs (more than {threshold}): the estimate first", err=True)
    show(fetch(api, sub))
    if sys.stdin.isatty():
        click.confirm("submit this batch?", abort=True, default=True)
