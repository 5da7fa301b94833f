"""`orchestrator schedules [ID]`: the schedules, or one schedule with what its last runs did."""

from __future__ import annotations

import json
from typing import Any

import click

from orchestrator.cli.api_client import Api, api_options
from orchestrator.cli.status import catalog_line


@click.command("schedules")
@click.argument("schedule_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@api_options
def schedules(api: Api, schedule_id: str | None, as_json: bool) -> None:
    """List schedules, or show one with its last runs (read / new / changed / unchanged / removed / failed)."""
    if schedule_id is None:
        page = api.json("GET", "/v1/schedules")
        if as_json:
            click.echo(json.dumps(page, indent=2))
            return
        rows = page.get("data") or []
        if not rows:
            click.echo("no schedules yet")
        for s in rows:
            flag = "" if s.get("enabled") else " (disabled)"
            error = f"  last error: {s['last_error']}" if s.get("last_error") else ""
            click.echo(f"{s['id']}  {s['name']}{flag}  {s['cron']} {s['timezone']}  next {s.get('next_run_at')}"
                       f"{error}")
        return
    schedule = api.json("GET", f"/v1/schedules/{schedule_id}")
    if as_json:
        click.echo(json.dumps(schedule, indent=2))
        return
    show_schedule(schedule)


def show_schedule(schedule: dict[str, Any]) -> None:
    """A schedule's settings and its last runs, newest first."""
    for key in ("id", "name", "cron", "timezone", "enabled", "next_run_at", "last_run_at", "last_error"):
        click.echo(f"{key + ':':<13}{schedule.get(key) if schedule.get(key) is not None else '-'}")
    runs = schedule.get("last_runs") or []
    click.echo("last runs:" if runs else "last runs:   none yet")
    for run in runs:
        if run.get("status") == "failed":
            click.echo(f"  {run['slot']}  FAILED: {run.get('error')}")
        else:
            summary = run.get("summary") or {}
            click.echo(f"  {run['slot']}  batch {run.get('batch_id')} {run.get('batch_state')}  "
                       f"{catalog_line(summary) if 'new' in summary else ''}".rstrip())
