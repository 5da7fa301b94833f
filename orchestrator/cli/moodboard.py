"""`orchestrator picks ...` and `orchestrator rerender`: the mood board from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.api_client import Api, CliError, api_options
from orchestrator.cli.downloads import save_results


@click.group("picks")
def picks() -> None:
    """Pick images of a batch, list them, export them (files, manifest, contact sheet)."""


@picks.command("list")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@api_options
def list_picks(api: Api, batch_id: str, as_json: bool) -> None:
    """List a batch's picks."""
    body = api.json("GET", f"/v1/batches/{batch_id}/picks")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for p in body["data"]:
        click.echo(f"{p['asset_id']}  {p['custom_id']}#{p['index']}  seed {p['seed']}  {p['model']}  {p['prompt']}")
    click.echo(f"{len(body['data'])} pick(s)")


def _change(api: Api, batch_id: str, add: list[str], remove: list[str]) -> None:
    body = api.json("POST", f"/v1/batches/{batch_id}/picks", json={"add": add, "remove": remove})
    click.echo(f"batch {batch_id}: {body['added']} picked, {body['removed']} un-picked; {len(body['data'])} pick(s)")


@picks.command("add")
@click.argument("batch_id")
@click.argument("asset_ids", nargs=-1, required=True)
@api_options
def add(api: Api, batch_id: str, asset_ids: tuple[str, ...]) -> None:
    """Pick images (asset ids from `orchestrator results --json`)."""
    _change(api, batch_id, list(asset_ids), [])


@picks.command("remove")
@click.argument("batch_id")
@click.argument("asset_ids", nargs=-1, required=True)
@api_options
def remove(api: Api, batch_id: str, asset_ids: tuple[str, ...]) -> None:
    """Un-pick images."""
    _change(api, batch_id, [], list(asset_ids))


@picks.command("export")
@click.argument("batch_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--thumb", type=click.IntRange(32, 1024), default=256, show_default=True)
@api_options
def export(api: Api, batch_id: str, dest: Path, thumb: int) -> None:
    """Download the picks into DEST with manifest.jsonl and contact-sheet.png."""
    body = api.json("GET", f"/v1/batches/{batch_id}/picks")
    if not body["data"]:
        raise CliError(f"batch {batch_id} has no picks")
    save_results(batch_id, [_line(p) for p in body["data"]], dest, sheet_limit=len(body["data"]), thumb=thumb)


def _line(pick: dict[str, Any]) -> dict[str, Any]:
    # The results-manifest shape, one image per line, so the download and sheet code is shared.
    image = {k: pick[k] for k in ("asset_id", "index", "url", "sha256", "width", "height", "content_type", "bytes",
                                  "seed", "storage_key")}
    return {"custom_id": pick["custom_id"], "position": pick["position"], "job_id": pick["job_id"],
            "prompt": pick["prompt"], "model": pick["model"], "provider": pick["provider"], "images": [image]}


@click.command("rerender")
@click.argument("batch_id")
@click.option("--model", help="target model (default: each job's own model)")
@click.option("--new-seeds", is_flag=True, help="draw new seeds (variations) instead of reusing the seeds")
@click.option("--picks", "use_picks", is_flag=True, help="re-render the batch's picks")
@click.option("--asset", "asset_ids", multiple=True, help="an image to re-render (repeatable)")
@click.option("--job", "job_ids", multiple=True, help="a whole job to re-render (repeatable)")
@click.option("--name", help="name of the new batch")
@api_options
def rerender(api: Api, batch_id: str, model: str | None, new_seeds: bool, use_picks: bool,
             asset_ids: tuple[str, ...], job_ids: tuple[str, ...], name: str | None) -> None:
    """Re-render images of a batch as a new batch linked to it (all jobs if nothing is chosen)."""
    body: dict[str, Any] = {"asset_ids": list(asset_ids), "job_ids": list(job_ids), "picks": use_picks,
                            "new_seeds": new_seeds}
    if model:
        body["model"] = model
    if name:
        body["name"] = name
    batch = api.json("POST", f"/v1/batches/{batch_id}/rerender", json=body)
    click.echo(f"batch {batch['id']}: {batch['total']} job(s) queued, re-rendering {batch_id}")


def register(main: click.Group) -> None:
    """Attach the commands."""
    main.add_command(picks)
    main.add_command(rerender)
