"""`orchestrator submit`: a .txt of prompts, a .jsonl of items or a .csv catalog, POSTed as one batch."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import click

from orchestrator.catalog import FAL_SIZE_PRESETS
from orchestrator.cli.api_client import Api, CliError, api_options
from orchestrator.cli.status import catalog_line
from orchestrator.cli.watch import finish, follow


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
