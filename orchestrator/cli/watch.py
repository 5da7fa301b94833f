"""Following a batch until it is final (`--watch`), riding out short API outages."""

from __future__ import annotations

import time
from typing import Any

import click

from orchestrator.cli import progress
from orchestrator.cli.api_client import Api, Transient
from orchestrator.cli.progress import JOB_STATES

WATCH_GRACE_SECONDS = 60.0  # how long --watch keeps polling through API errors before giving up


def follow(api: Api, batch_id: str, interval: float) -> dict[str, Any]:
    """Poll the batch until it is final, drawing progress (orchestrator.cli.progress); returns it."""
    try:
        return progress.watch_batch(lambda: poll(api, batch_id, interval), interval)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; the batch carries on (orchestrator status {batch_id})", err=True)
        raise SystemExit(130) from None


def poll(api: Api, batch_id: str, interval: float) -> dict[str, Any]:
    """GET the batch, riding out an API restart or outage of up to WATCH_GRACE_SECONDS."""
    deadline = time.monotonic() + WATCH_GRACE_SECONDS
    attempt = 0
    while True:
        try:
            return api.json("GET", f"/v1/batches/{batch_id}")
        except Transient as exc:
            # The batch keeps running server-side; giving up on a blip would only lose the view.
            # At least one retry, however slow the first failure was (a loaded machine).
            if attempt and time.monotonic() >= deadline:
                raise
            attempt += 1
            click.echo(f"\n(retrying: {exc.message.splitlines()[0]})", err=True)
            time.sleep(max(interval, 1.0))


def finish(batch: dict[str, Any]) -> None:
    """Print the final summary and exit 0 only if every job succeeded."""
    counts = batch.get("counts") or {}
    summary = ", ".join(f"{s} {counts[s]}" for s in JOB_STATES if counts.get(s))
    click.echo(f"batch {batch['id']} {batch['state']}: {summary or 'no jobs'}; cost {batch.get('cost', 0):.4f}"
               f" USD (estimated {batch.get('estimated_cost') or 0:.4f})")
    if batch.get("state") != "succeeded":
        click.echo(f"details: orchestrator results {batch['id']}", err=True)
        raise SystemExit(1)
