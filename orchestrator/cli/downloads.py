"""Downloading a batch's images (sha256-checked), with a local manifest and a contact sheet."""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx

from orchestrator.cli.api_client import MAX_LISTED, CliError
from orchestrator.contact_sheet import SheetEntry, make_contact_sheet

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}


def image_filename(line: dict[str, Any], image: dict[str, Any]) -> str:
    """`<position>-<custom_id>-<index>.<ext>`, with the custom_id made safe for any filesystem."""
    custom_id = re.sub(r"[^A-Za-z0-9._-]+", "_", str(line.get("custom_id") or "job")).strip("._")[:80] or "job"
    ext = EXTENSIONS.get(str(image.get("content_type") or "").lower())
    if ext is None:
        ext = Path(str(image.get("storage_key") or "")).suffix.lstrip(".").lower() or "bin"
    return f"{line.get('position')}-{custom_id}-{image.get('index', 0)}.{ext}"


def download_image(client: httpx.Client, dest: Path, line: dict[str, Any], image: dict[str, Any]) -> str | None:
    """Fetch one image and keep it only if its sha256 matches; returns an error message or None."""
    name = image_filename(line, image)
    try:
        # A bare client: the presigned URL carries its own authorization, and the API key
        # must never travel to a storage host.
        resp = client.get(str(image.get("url")))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return f"{name}: could not fetch: {str(exc) or type(exc).__name__}"
    if resp.status_code != 200:
        return f"{name}: storage answered HTTP {resp.status_code}"
    digest = hashlib.sha256(resp.content).hexdigest()
    if digest != image.get("sha256"):
        return f"{name}: sha256 mismatch (got {digest[:12]}..., expected {str(image.get('sha256'))[:12]}...)"
    partial = dest / (name + ".part")
    partial.write_bytes(resp.content)
    os.replace(partial, dest / name)  # atomic, so a file under its final name is always complete
    return None


def download_all(manifest: list[dict[str, Any]], dest: Path) -> dict[str, str]:
    """Download every image in parallel; returns {file name: error} for those that failed."""
    tasks = [(line, image) for line in manifest for image in line.get("images") or []]
    with httpx.Client(timeout=60, follow_redirects=True) as client, ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda t: download_image(client, dest, *t), tasks))
    return {image_filename(*task): err for task, err in zip(tasks, outcomes, strict=True) if err}


def local_manifest(manifest: list[dict[str, Any]], errors: dict[str, str]) -> list[dict[str, Any]]:
    """Manifest lines pointing at the downloaded files instead of expiring presigned URLs."""
    out = []
    for line in manifest:
        images = []
        for image in line.get("images") or []:
            name = image_filename(line, image)
            local = {k: v for k, v in image.items() if k != "url"}
            local["file"] = None if name in errors else name
            if name in errors:
                local["download_error"] = errors[name]
            images.append(local)
        out.append({**line, "images": images})
    return out


def sheet_entries(manifest: list[dict[str, Any]], dest: Path) -> list[SheetEntry]:
    """One contact-sheet cell per image, and a placeholder for each job without images."""
    entries = []
    for line in manifest:
        # Which provider and model drew it first (a mood board mixes them), then what was asked.
        label = f"{line.get('provider') or '?'} {line.get('model') or ''}".rstrip()
        caption = f"{label}\n{line.get('custom_id')}: {line.get('prompt') or ''}"
        for image in line.get("images") or []:
            path = dest / image["file"] if image.get("file") else None
            entries.append(SheetEntry(path, caption, None if path else "download failed"))
        if not line.get("images"):
            error = line.get("error") or {}
            entries.append(SheetEntry(None, caption, error.get("code") or line.get("status")))
    return entries


def save_results(batch_id: str, manifest: list[dict[str, Any]], dest: Path, *, sheet_limit: int, thumb: int) -> None:
    """Download the images, write manifest.jsonl and contact-sheet.png into `dest`."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        errors = download_all(manifest, dest)
        local = local_manifest(manifest, errors)
        manifest_path = dest / "manifest.jsonl"
        manifest_path.write_text("".join(json.dumps(line) + "\n" for line in local))
        entries = sheet_entries(local, dest)
        title = f"batch {batch_id}"
        if len(entries) > sheet_limit:
            title += f" (first {sheet_limit} of {len(entries)})"
        sheet = make_contact_sheet(entries[:sheet_limit], dest / "contact-sheet.png", thumb=thumb, title=title)
    except OSError as exc:
        raise CliError(f"cannot write into {dest}: {exc.strerror or exc}") from None
    saved = sum(1 for line in local for image in line["images"] if image["file"])
    click.echo(f"downloaded {saved} image(s) into {dest}")
    click.echo(f"manifest: {manifest_path}")
    click.echo(f"contact sheet: {dest / 'contact-sheet.png'} ({sheet[0]}x{sheet[1]})")
    if errors:
        report_download_errors(errors)


def report_download_errors(errors: dict[str, str]) -> None:
    """List failed downloads and exit 1: what was fetched is kept, the rest can be fetched again."""
    for message in list(errors.values())[:MAX_LISTED]:
        click.echo(f"  {message}", err=True)
    if len(errors) > MAX_LISTED:
        click.echo(f"  ... and {len(errors) - MAX_LISTED} more", err=True)
    click.echo(f"{len(errors)} image(s) could not be downloaded", err=True)
    raise SystemExit(1)
