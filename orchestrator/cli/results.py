"""`orchestrator results`: a batch's manifest summarized, or downloaded with a contact sheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.api_client import MAX_LISTED, Api, CliError, api_options
from orchestrator.cli.downloads import save_results


def fetch_manifest(api: Api, batch_id: str) -> list[dict[str, Any]]:
    """The batch's JSONL manifest, one dict per job in position order."""
    resp = api.call("GET", f"/v1/batches/{batch_id}/results", headers={"Accept": "application/x-ndjson"})
    lines = []
    for number, line in enumerate(resp.text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            raise CliError(f"the results manifest has invalid JSON on line {number}") from None
    return lines


def summarize(batch_id: str, manifest: list[dict[str, Any]]) -> None:
    """Counts by status, images, cost, and the first failures with their errors."""
    by_status: dict[str, int] = {}
    for line in manifest:
        by_status[line.get("status", "?")] = by_status.get(line.get("status", "?"), 0) + 1
    images = sum(len(line.get("images") or []) for line in manifest)
    cost = sum(line.get("cost") or 0 for line in manifest)
    counts = ", ".join(f"{s} {n}" for s, n in sorted(by_status.items()))
    sources = {src: sum(line.get("cost") or 0 for line in manifest if line.get("cost_source") == src)
               for src in ("reported", "priced")}
    detail = ", ".join(f"{src} {usd:.4f}" for src, usd in sources.items() if usd)
    click.echo(f"batch {batch_id}: {len(manifest)} job(s) ({counts or 'none'}), {images} image(s), "
               f"cost {cost:.4f} USD" + (f" ({detail})" if detail else ""))
    failed = [line for line in manifest if line.get("status") == "failed"]
    for line in failed[:MAX_LISTED]:
        error = line.get("error") or {}
        click.echo(f"  failed #{line.get('position')} {line.get('custom_id')}: "
                   f"{error.get('code') or 'error'}: {error.get('message') or ''}".rstrip())
    if len(failed) > MAX_LISTED:
        click.echo(f"  ... and {len(failed) - MAX_LISTED} more failed")


@click.command("results")
@click.argument("batch_id")
@click.option("--download", "download_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="fetch every image into DIR with manifest.jsonl and contact-sheet.png")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="print the raw JSONL manifest instead of a summary")
@click.option("--sheet-limit", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="at most this many cells on the contact sheet")
@click.option("--thumb", type=click.IntRange(32, 1024), default=256, show_default=True, help="thumbnail size")
@api_options
def results(api: Api, batch_id: str, download_dir: Path | None, as_jsonl: bool, sheet_limit: int, thumb: int) -> None:
    """Summarize a batch's results; with --download, fetch images and draw a contact sheet."""
    manifest = fetch_manifest(api, batch_id)
    if as_jsonl:
        for line in manifest:
            click.echo(json.dumps(line))
    else:
        summarize(batch_id, manifest)
    if download_dir is not None:
        save_results(batch_id, manifest, download_dir, sheet_limit=sheet_limit, thumb=thumb)
