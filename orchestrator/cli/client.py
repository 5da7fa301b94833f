"""Client commands over HTTP: submit, status, results, cancel, retry.

They talk to a running API (`--api-url`, default $ORCH_API_URL) with a bearer key (`--api-key`,
default $ORCH_API_KEY), never to the database, so they work from any machine. Every failure
(API problem documents, unreachable hosts, bad files) is shown as a readable message with
exit code 2; nothing escapes as a traceback.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import click
import httpx

from orchestrator.catalog import FAL_SIZE_PRESETS
from orchestrator.cli import progress
from orchestrator.cli.progress import JOB_STATES
from orchestrator.contact_sheet import SheetEntry, make_contact_sheet

DEFAULT_API_URL = "http://127.0.0.1:8000"
MAX_LISTED = 20
WATCH_GRACE_SECONDS = 60.0  # how long --watch keeps polling through API errors before giving up
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}


class CliError(click.ClickException):
    """A readable failure; exit code 2, like click's own usage errors."""

    exit_code = 2


class Transient(CliError):
    """The API could not be reached or failed on its side (5xx): worth another try while watching."""


@dataclass(frozen=True)
class Api:
    """Where the API is and how to authenticate; the key is only ever sent, never shown."""

    url: str
    key: str | None
    timeout: float = 30.0

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; problems and transport failures become CliError."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        with reachable(self.url), httpx.Client(timeout=self.timeout) as client:
            resp = client.request(method, self.url.rstrip("/") + path, headers=headers, **kwargs)
        if resp.status_code >= 400:
            raise (Transient if resp.status_code >= 500 else CliError)(describe_problem(resp))
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request and return its JSON object."""
        resp = self.call(method, path, **kwargs)
        try:
            body = resp.json()
        except ValueError:
            raise CliError(f"the API at {self.url} answered {path} with something that is not JSON") from None
        if not isinstance(body, dict):
            raise CliError(f"the API at {self.url} answered {path} with unexpected JSON")
        return body


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn httpx transport failures into one line naming the URL."""
    try:
        yield
    except httpx.TimeoutException:
        raise Transient(f"the API at {url} did not answer in time") from None
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        reason = str(exc) or type(exc).__name__
        raise Transient(f"could not reach the API at {url}: {reason} (check --api-url or ORCH_API_URL)") from None


def describe_problem(resp: httpx.Response) -> str:
    """A problem+json document (or any error response) as a few readable lines."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(resp.text.split())[:200]
        return f"the API answered HTTP {resp.status_code} {resp.reason_phrase}" + (f": {text}" if text else "")
    title = body.get("title") or resp.reason_phrase
    detail = body.get("detail")
    lines = [f"{title} (HTTP {resp.status_code})" + (f": {detail}" if detail else "")]
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    lines += [f"  - {item_problem(e)}" for e in errors[:MAX_LISTED]]
    count = body.get("error_count")
    total = count if isinstance(count, int) else len(errors)
    if total > MAX_LISTED:
        lines.append(f"  ... and {total - MAX_LISTED} more")
    if resp.status_code == 401:
        lines.append("  (pass --api-key or set ORCH_API_KEY)")
    return "\n".join(lines)


def item_problem(error: dict[str, Any]) -> str:
    """One invalid item as `position 3 (custom_id 'a'), field 'model': message`."""
    where = []
    if error.get("position") is not None:
        where.append(f"position {error['position']}")
    if error.get("custom_id"):
        where.append(f"(custom_id {error['custom_id']!r})")
    prefix = " ".join(where) or "batch"
    field, message = error.get("field"), error.get("message") or "invalid"
    return f"{prefix}, field {field!r}: {message}" if field else f"{prefix}: {message}"


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --api-url/--api-key and hand the command an `api: Api` instead."""

    @click.option("--api-url", envvar="ORCH_API_URL", default=DEFAULT_API_URL, show_default=True,
                  help="base URL of the API [env ORCH_API_URL]")
    @click.option("--api-key", envvar="ORCH_API_KEY", default=None, show_default=False,
                  help="API key [env ORCH_API_KEY]")
    @functools.wraps(command)
    def wrapper(api_url: str, api_key: str | None, **kwargs: Any) -> Any:
        return command(api=Api(api_url, api_key), **kwargs)

    return wrapper


# --- submit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """What to POST: body, its content type, and query parameters (JSONL only)."""

    body: bytes
    content_type: str
    params: dict[str, str]


def parse_ints(value: str, option: str) -> list[int]:
    """`1,2,3` as integers."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=option) from None


SIZES_HELP = f"WIDTHxHEIGHT (e.g. 768x512) or a preset ({', '.join(FAL_SIZE_PRESETS)})"


def parse_sizes(value: str) -> list[str | dict[str, int]]:
    """`square,landscape_4_3,768x512`: preset names, or WIDTHxHEIGHT as explicit sizes."""
    sizes: list[str | dict[str, int]] = []
    for raw in (v.strip() for v in value.split(",")):
        match = re.fullmatch(r"(\d+)[xX](\d+)", raw)
        if match:
            sizes.append({"width": int(match[1]), "height": int(match[2])})
        elif raw in FAL_SIZE_PRESETS:
            sizes.append(raw)
        elif raw:
            raise click.BadParameter(f"unknown size {raw!r}; each size is {SIZES_HELP}", param_hint="--sizes")
    if not sizes:
        raise click.BadParameter(f"give at least one size: {SIZES_HELP}", param_hint="--sizes")
    return sizes


def read_text(path: Path) -> str:
    """A UTF-8 text file (a BOM is tolerated), or a readable error."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-blank line; lines starting with '#' are comments."""
    prompts = [line.strip() for line in read_text(path).splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise CliError(f"{path} has no prompts (one per line)")
    return prompts


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV header's columns, and the rows keyed by them."""
    try:
        reader = csv.DictReader(read_text(path).splitlines())
        rows = list(reader)
    except csv.Error as exc:
        raise CliError(f"{path} is not valid CSV: {exc}") from None
    if not rows:
        raise CliError(f"{path} has no rows below its header line")
    # A row longer than the header puts extras under the key None, which JSON cannot carry.
    return list(reader.fieldnames or []), [{k: v for k, v in row.items() if k is not None} for row in rows]


def check_columns(path: Path, columns: list[str], template: str, id_field: str | None) -> None:
    """Say once, before sending, when the template or --id-field names a column the header lacks."""
    have = f"{path.name} has the columns {', '.join(columns)}"
    if id_field and id_field not in columns:
        raise CliError(f"--id-field {id_field!r} is not a column in the header of {path.name}; {have}")
    try:
        used = [name for _, name, _, _ in Formatter().parse(template) if name]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--template") from None
    missing = [name for name in dict.fromkeys(used) if name not in columns]
    if missing:
        names = ", ".join("{" + m + "}" for m in missing)
        raise CliError(f"the template uses {names} but {path.name} has no such column; {have}")


def matrix_batch(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """A .txt file of prompts as a `matrix` batch."""
    matrix: dict[str, Any] = {"prompts": read_prompts(path), "model": opts["model"]}
    if opts["seeds"] is not None:
        matrix["seeds"] = parse_ints(opts["seeds"], "--seeds")
    if opts["variants"] is not None:
        matrix["variants"] = opts["variants"]
    if opts["sizes"]:
        matrix["sizes"] = parse_sizes(opts["sizes"])
    if opts["styles"]:
        matrix["styles"] = list(opts["styles"])
    return {"matrix": matrix}


def catalog_batch(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """A .csv file plus a prompt template as a `catalog` batch."""
    columns, rows = read_rows(path)
    check_columns(path, columns, opts["template"], opts["id_field"])
    catalog: dict[str, Any] = {"template": opts["template"], "rows": rows, "model": opts["model"]}
    if opts["id_field"]:
        catalog["id_field"] = opts["id_field"]
    if opts["sizes"]:
        sizes = parse_sizes(opts["sizes"])
        if len(sizes) != 1:
            raise click.UsageError("a catalog batch takes one size (--sizes SIZE)")
        catalog["image_size"] = sizes[0]
    if opts.get("only_changed"):
        # The catalog's name ties this run to the images earlier runs stored (default: the file's name).
        catalog["only_changed"] = True
        catalog["name"] = opts.get("catalog_name") or re.sub(r"[^A-Za-z0-9._:-]", "-", path.stem).lstrip("._:-")
    elif opts.get("catalog_name"):
        catalog["name"] = opts["catalog_name"]
    if opts.get("key_pattern"):
        catalog["key_pattern"] = opts["key_pattern"]
    return {"catalog": catalog}


def check_options(kind: str, opts: dict[str, Any]) -> None:
    """Reject options that do not apply to this kind of file, before anything is sent."""
    if opts["seeds"] is not None and opts["variants"] is not None:
        raise click.UsageError("give --seeds or --variants, not both")
    matrix_only = [n for n in ("seeds", "variants", "styles") if opts[n]]
    if kind != "txt" and matrix_only:
        raise click.UsageError(f"--{matrix_only[0]} applies to a .txt file of prompts only")
    if kind == "jsonl" and opts["sizes"]:
        raise click.UsageError("--sizes does not apply to a JSONL file; put sizes on its items")
    if kind == "csv" and not opts["template"]:
        raise click.UsageError('a .csv file needs --template, e.g. --template "Photo of {name}"')
    if kind != "csv" and (opts["template"] or opts["id_field"]):
        raise click.UsageError("--template and --id-field apply to a .csv file only")
    catalog_only = [n for n in ("only_changed", "catalog_name", "key_pattern") if opts.get(n)]
    if kind != "csv" and catalog_only:
        raise click.UsageError(f"--{catalog_only[0].replace('_', '-')} applies to a .csv catalog only")


def file_kind(path: Path) -> str:
    """txt, jsonl or csv, from the file name."""
    suffix = path.suffix.lower()
    kinds = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
    if suffix not in kinds:
        raise click.UsageError(f"cannot tell what {path.name} holds: use a .txt (prompts), .jsonl (items) "
                               "or .csv (rows, with --template) file")
    return kinds[suffix]


def build_submission(path: Path, opts: dict[str, Any]) -> Submission:
    """Turn the file and options into the request to send."""
    kind = file_kind(path)
    check_options(kind, opts)
    options = {k: opts[k] for k in ("name", "lane", "callback_url") if opts[k]}
    if kind == "jsonl":
        body = read_text(path).encode()
        if not body.strip():
            raise CliError(f"{path} is empty")
        return Submission(body, "application/x-ndjson", {**options, "model": opts["model"]})
    form = matrix_batch(path, opts) if kind == "txt" else catalog_batch(path, opts)
    return Submission(json.dumps({**options, **form}).encode(), "application/json", {})


def post_batch(api: Api, sub: Submission, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """POST the batch; returns (batch, created) where created is False for an idempotent replay."""
    headers = {"Content-Type": sub.content_type}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    resp = api.call("POST", "/v1/batches", content=sub.body, params=sub.params, headers=headers)
    try:
        return resp.json(), resp.status_code == 201
    except ValueError:
        raise CliError("the API accepted the batch but its answer is not JSON") from None


@click.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default="flux-schnell", show_default=True, help="model id or family alias")
@click.option("--seeds", default=None, help="comma-separated seeds, e.g. 1,2,3 (.txt)")
@click.option("--variants", type=click.IntRange(1, 1000), default=None, help="random seeds per prompt (.txt)")
@click.option("--sizes", default=None,
              help=f"comma-separated sizes, each {SIZES_HELP} (.txt; one size for .csv)")
@click.option("--styles", "--style", "styles", multiple=True, help="style appended to each prompt; repeatable (.txt)")
@click.option("--template", default=None, help='prompt template for a .csv, e.g. "Photo of {name}"')
@click.option("--id-field", default=None, help="CSV column used as each job's custom_id")
@click.option("--only-changed", is_flag=True, help="skip rows whose stored image is unchanged (.csv)")
@click.option("--catalog-name", default=None, help="catalog whose images --only-changed reuses (default: file name)")
@click.option("--key-pattern", default=None, help="stable object key per row, e.g. catalog/{sku}/{n}.{ext} (.csv)")
@click.option("--name", default="", help="batch name")
@click.option("--lane", type=click.Choice(["interactive", "bulk"]), default=None, help="priority lane")
@click.option("--callback-url", default=None, help="URL to notify when the batch is done")
@click.option("--idempotency-key", default=None, help="resubmitting with the same key returns the same batch")
@click.option("--watch", is_flag=True, help="follow progress until the batch is done")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="seconds between polls with --watch")
@click.option("--max-cost", "max_cost", type=click.FloatRange(0, 1_000_000, min_open=True), default=None,
              help="USD cap for this batch (max_cost_usd): dispatch never spends more")
@click.option("--estimate", "estimate_only", is_flag=True, help="print the cost estimate and exit (a dry run)")
@click.option("--confirm-above", type=click.IntRange(0), default=1000, show_default=True, envvar="ORCH_CONFIRM_ABOVE",
              help="show the estimate (and ask, on a terminal) before submitting more jobs than this")
@click.option("--yes", "-y", is_flag=True, help="submit without showing the estimate first")
@api_options
def submit(api: Api, file: Path, idempotency_key: str | None, watch: bool, interval: float, max_cost: float | None,
           estimate_only: bool, confirm_above: int, yes: bool, **opts: Any) -> None:
    """Submit FILE: a .txt of prompts, a .jsonl of items, or a .csv with --template."""
    from orchestrator.cli import estimate

    sub = estimate.with_options(build_submission(file, opts), max_cost_usd=max_cost)
    if estimate_only:
        estimate.show(estimate.fetch(api, sub))
        return
    if not yes:
        estimate.confirm_large(api, sub, confirm_above)
    batch, created = post_batch(api, sub, idempotency_key)
    verb = "submitted" if created else "already submitted (same idempotency key)"
    click.echo(f"batch {batch['id']} {verb}: {batch['total']} job(s), lane {batch['lane']}, state {batch['state']}")
    if batch.get("catalog"):
        click.echo(f"catalog {batch['catalog'].get('catalog')}: {catalog_line(batch['catalog'])}")
    if watch:
        finish(follow(api, batch["id"], interval))


# --- watching -----------------------------------------------------------------------------------


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


# --- status ---------------------------------------------------------------------------------------


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


# --- results --------------------------------------------------------------------------------------


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


# --- downloads ------------------------------------------------------------------------------------


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


# --- cancel and retry -----------------------------------------------------------------------------


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


def register(main: click.Group) -> None:
    """Attach the client commands to the main group."""
    for command in (submit, status, results, cancel, retry):
        main.add_command(command)
