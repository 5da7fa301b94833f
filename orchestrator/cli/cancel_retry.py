"""`orchestrator cancel` and `orchestrator retry`: a batch's unfinished jobs stopped, its failed ones re-queued."""

from __future__ import annotations

import click

from orchestrator.cli.api_client import Api, api_options
from orchestrator.cli.watch import finish, follow


@click.command("cancel")
@click.argument("batch_id")
@api_options
def cancel(api: Api, batch_id: str) -> None:
    """Cancel a batch's unfinished jobs."""
    batch = api.json("POST", f"/v1/batches/{batch_id}/cancel")
    count = batch.get("cancelled_jobs", 0)
    click.echo(f"batch {batch['id']}: cancelled {count} unfinished job(s); batch is {batch['state']}")


@click.command("retry")
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="follow progress until the batch is done again")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True)
@api_options
def retry(api: Api, batch_id: str, watch: bool, interval: float) -> None:
    """Re-queue a batch's failed jobs (succeeded jobs are kept)."""
    batch = api.json("POST", f"/v1/batches/{batch_id}/retry")
    count = batch.get("requeued_jobs", 0)
    if not count:
        click.echo(f"batch {batch['id']}: no failed jobs to retry; batch is {batch['state']}")
        return
    click.echo(f"batch {batch['id']}: re-queued {count} failed job(s); batch is {batch['state']}")
    if watch:
        finish(follow(api, batch["id"], interval))
