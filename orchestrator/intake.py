"""Turn a batch request (JSON in three forms, or JSONL) into validated job rows.

Pure functions: nothing here touches the database, so every rule is testable directly and a
rejected batch cannot leave a partial write behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from string import Formatter
from typing import Any

from pydantic import ValidationError

from orchestrator import catalog, jsonbody, netpolicy
from orchestrator.errors import BatchRejected, ItemProblem, TooLarge
from orchestrator.schemas import BatchRequest, Catalog, Matrix

PARAM_FIELDS = ("negative_prompt", "width", "height", "image_size", "steps", "guidance", "seed",
                "num_images", "output_format", "loras", "native")


@dataclass(frozen=True)
class JobSpec:
    """One validated job, ready to insert."""

    position: int
    custom_id: str
    requested_model: str
    provider: str
    model: str
    params: dict[str, Any]
    num_images: int


@dataclass(frozen=True)
class Plan:
    """A validated batch: its options and its jobs."""

    request: BatchRequest
    jobs: list[JobSpec]


def parse_json(raw: bytes, max_items: int) -> BatchRequest:
    """Parse a JSON body into a BatchRequest, or raise BatchRejected saying where."""
    data = jsonbody.loads_batch_body(raw)
    if not isinstance(data, dict):
        raise BatchRejected([ItemProblem(None, None, "body", "must be a JSON object")])
    items = data.get("items")
    if isinstance(items, list) and len(items) > max_items:
        raise TooLarge(f"{len(items)} items given; at most {max_items} per batch")
    return _validate(data)


def parse_jsonl(raw: bytes, options: Mapping[str, str], max_items: int) -> BatchRequest:
    """Parse a JSONL body (one item per line); batch options come from the query string."""
    items: list[Any] = []
    problems: list[ItemProblem] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchRejected([ItemProblem(None, None, "body", "JSONL body must be UTF-8")]) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(items) >= max_items:
            raise TooLarge(f"more than {max_items} items; at most {max_items} per batch")
        try:
            items.append(jsonbody.loads(line))
        except jsonbody.BodyProblem as exc:
            if exc.path is None:
                problems.append(ItemProblem(len(items), None, "line", f"line {number}: {exc.message}"))
            else:
                problem = jsonbody.as_item_problem(exc, jsonbody.partial(line), position=len(items))
                problems.append(ItemProblem(problem.position, problem.custom_id, problem.field,
                                            f"line {number}: {problem.message}"))
            items.append({})
    if problems:
        raise BatchRejected(problems)
    if not items:
        raise BatchRejected([ItemProblem(None, None, "body", "no items: the JSONL body is empty")])
    data: dict[str, Any] = {"items": items}
    for key in ("name", "lane", "callback_url", "max_cost_usd", "unknown_outcome"):
        if options.get(key):
            data[key] = options[key]
    if options.get("dry_run"):
        data["dry_run"] = options["dry_run"]
    if options.get("model"):
        data["defaults"] = {"model": options["model"]}
    return _validate(data)


def check_callback(request: BatchRequest, policy: netpolicy.AddressPolicy, prefix: str = "") -> None:
    """Refuse a callback_url whose host is, or resolves to, a non-public address (SSRF)."""
    if request.callback_url is None:
        return
    try:
        netpolicy.check_url(str(request.callback_url), policy)
    except netpolicy.AddressRefused as exc:
        raise BatchRejected([ItemProblem(None, None, prefix + "callback_url", f"refused: {exc}")]) from None


def _validate(data: dict[str, Any]) -> BatchRequest:
    try:
        return BatchRequest.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(err, data) for err in exc.errors()]
    # Check the structurally sound items against their models too, and every custom_id for
    # duplicates, so one answer lists every problem.
    problems += _model_problems(data, {p.position for p in problems})
    problems += _duplicate_problems(data.get("items"), data.get("defaults"))
    raise rejected(problems)


def rejected(problems: list[ItemProblem], detail: str | None = None) -> BatchRejected:
    """One rejection for every problem, in position order; unknown models get the known list once."""
    problems = sorted(problems, key=lambda p: (p.position is not None, p.position or 0))
    if detail is None and any(p.field == "model" and p.message.startswith("unknown model") for p in problems):
        count = len(problems)
        detail = (f"{count} problem{'s' if count != 1 else ''} found; nothing was written. "
                  f"Known models and aliases: {catalog.known_models()}")
    return BatchRejected(problems, detail)


# Both walks over the items (plan's over a valid request, _model_problems/_duplicate_problems over
# a body that failed validation, to list every problem at once) check an item with these two.

class _SeenIds:
    """The custom_ids met so far: a repeat is a problem naming the first one's position."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}

    def repeat(self, position: int, custom_id: str) -> ItemProblem | None:
        if custom_id not in self.first:
            self.first[custom_id] = position
            return None
        first = self.first[custom_id]
        return ItemProblem(position, custom_id, "custom_id", f"duplicate of the item at position {first}")


def _item_job(position: int, custom_id: str, item: dict[str, Any], problems: list[ItemProblem],
              problem_id: str | None) -> JobSpec | None:
    """The item's job; or None, its model's problems added to `problems` (under `problem_id`)."""
    try:
        return _job(position, custom_id, item)
    except catalog.CatalogError as err:
        problems.extend(ItemProblem(position, problem_id, f, m) for f, m in err.problems)
        return None


def _duplicate_problems(items: Any, defaults: Any) -> list[ItemProblem]:
    if not isinstance(items, list):
        return []
    ids = _SeenIds()
    problems = []
    for position, raw in enumerate(items):
        custom_id = raw.get("custom_id") if isinstance(raw, dict) else None
        if isinstance(custom_id, str) and custom_id and (repeat := ids.repeat(position, custom_id)):
            problems.append(repeat)
    return problems


def _model_problems(data: dict[str, Any], skip: set[int | None]) -> list[ItemProblem]:
    items, defaults = data.get("items"), data.get("defaults")
    if not isinstance(items, list) or None in skip:
        return []
    base = {k: v for k, v in defaults.items() if v is not None} if isinstance(defaults, dict) else {}
    problems: list[ItemProblem] = []
    for position, raw in enumerate(items):
        if position in skip or not isinstance(raw, dict):
            continue
        merged = {**base, **raw}
        custom_id = merged.pop("custom_id", None)
        try:
            _item_job(position, str(custom_id), merged, problems, custom_id if isinstance(custom_id, str) else None)
        except (TypeError, ValueError, AttributeError):
            continue  # malformed beyond what the structural errors already say
    return problems


def _problem_from_pydantic(err: Mapping[str, Any], data: Mapping[str, Any]) -> ItemProblem:
    loc = list(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int):
        position = loc[1]
        raw = data["items"][position] if position < len(data["items"]) else None
        custom_id = raw.get("custom_id") if isinstance(raw, dict) else None
        field = ".".join(str(p) for p in loc[2:] if not str(p).startswith("function-")) or "item"
        if err["type"] == "extra_forbidden":
            message = "is not a known field"
        return ItemProblem(position, custom_id if isinstance(custom_id, str) else None, field, message)
    field = ".".join(str(p) for p in loc) or "body"
    if err["type"] == "extra_forbidden":
        message = "is not a known field"
    return ItemProblem(None, None, field, message)


def plan(request: BatchRequest, max_items: int) -> Plan:
    """Expand the request into items, validate each against its model, reject as a whole."""
    defaults = request.defaults.model_dump(exclude_none=True) if request.defaults else {}
    problems: list[ItemProblem] = []
    raw_items = list(_expand(request, max_items, problems))
    jobs: list[JobSpec] = []
    ids = _SeenIds()
    for position, item in enumerate(raw_items):
        if item is None:
            continue  # a catalog row whose problem is already listed
        merged = {**defaults, **item}
        custom_id = str(merged.pop("custom_id", None) or f"item-{position}")
        if repeat := ids.repeat(position, custom_id):
            problems.append(repeat)  # a repeated id is not checked against its model
        elif job := _item_job(position, custom_id, merged, problems, custom_id):
            jobs.append(job)
    if problems:
        raise rejected(problems)
    return Plan(request, jobs)


def _job(position: int, custom_id: str, item: dict[str, Any]) -> JobSpec:
    name = item.pop("model", None)
    if not name:
        raise catalog.CatalogError([("model", "is required (on the item or in defaults)")])
    spec = catalog.resolve_model(name)
    params = catalog.normalize(spec, item)
    return JobSpec(position, custom_id, name, spec.provider, spec.id, params, params["num_images"])


def _expand(request: BatchRequest, max_items: int, problems: list[ItemProblem]) -> Iterable[dict[str, Any] | None]:
    if request.items is not None:
        for item in request.items:
            yield item.model_dump(exclude_none=True)
    elif request.matrix is not None:
        yield from _expand_matrix(request.matrix, max_items)
    elif request.catalog is not None:
        if request.catalog.rows is None:
            raise BatchRejected([ItemProblem(None, None, "catalog.source", "a source is read when a schedule fires; "
                                             "a batch takes its rows inline (catalog.rows)")])
        if len(request.catalog.rows) > max_items:
            raise TooLarge(f"{len(request.catalog.rows)} rows given; at most {max_items} per batch")
        yield from _expand_catalog(request.catalog, problems)


def _common(form: Matrix | Catalog) -> dict[str, Any]:
    base = form.model_dump(exclude_none=True, include=set(PARAM_FIELDS))
    if form.model:
        base["model"] = form.model
    return base


def _expand_matrix(m: Matrix, max_items: int) -> Iterable[dict[str, Any]]:
    # Seeds for variants are drawn once here and stored, so every image is reproducible.
    seeds: list[int | None] = list(m.seeds) if m.seeds is not None else (
        [secrets.randbelow(2**31) for _ in range(m.variants)] if m.variants else [None])
    sizes: list[Any] = list(m.sizes) if m.sizes else [None]
    styles: list[str | None] = list(m.styles) if m.styles else [None]
    total = len(m.prompts) * len(seeds) * len(sizes) * len(styles)
    if total > max_items:
        raise TooLarge(f"the matrix expands to {total} items; at most {max_items} per batch")
    base = _common(m)
    for pi, prompt in enumerate(m.prompts):
        for si, seed in enumerate(seeds):
            for zi, size in enumerate(sizes):
                for ti, style in enumerate(styles):
                    item = dict(base, prompt=f"{prompt}, {style}" if style else prompt)
                    item["custom_id"] = f"p{pi}-s{si}-z{zi}-t{ti}"
                    if seed is not None:
                        item["seed"] = seed
                    if size is not None:
                        item.pop("width", None)
                        item.pop("height", None)
                        item["image_size"] = size if isinstance(size, str) else size.model_dump()
                    yield item


def _expand_catalog(c: Catalog, problems: list[ItemProblem]) -> Iterable[dict[str, Any] | None]:
    """One item per row (None for a row with a problem, so positions stay the row numbers)."""
    fields = {name for _, name, _, _ in Formatter().parse(c.template) if name}
    rows = c.rows or []
    columns = sorted({k for row in rows for k in row})
    # A field that no row has is a column mismatch (a typo in the template or --id-field):
    # say so once, with the columns the rows do have, instead of once per row.
    absent = sorted(f for f in fields if all(_blank(row.get(f)) for row in rows))
    if absent:
        problems.append(ItemProblem(None, None, "catalog.template",
                                    f"no row has a value for {', '.join(absent)}; the rows have {', '.join(columns)}"))
    id_field = c.id_field
    id_absent = id_field is not None and all(_blank(row.get(id_field)) for row in rows)
    if id_absent:
        problems.append(ItemProblem(None, None, "catalog.id_field",
                                    f"no row has a field {c.id_field!r}; the rows have {', '.join(columns)}"))
    base = _common(c)
    for i, row in enumerate(rows):
        missing = sorted(f for f in fields if row.get(f) in (None, "") and f not in absent)
        custom_id = str(row[c.id_field]) if c.id_field and row.get(c.id_field) not in (None, "") else None
        if c.id_field and custom_id is None and not id_absent:
            problems.append(ItemProblem(i, None, c.id_field, "id field is missing in this row"))
        if missing:
            problems.append(ItemProblem(i, custom_id, "template", f"row has no value for {', '.join(missing)}"))
        if missing or absent:
            yield None
            continue
        try:
            prompt = c.template.format_map({k: "" if v is None else v for k, v in row.items()})
        except (ValueError, IndexError) as exc:
            raise BatchRejected([ItemProblem(None, None, "catalog.template", str(exc))]) from None
        yield dict(base, prompt=prompt, custom_id=custom_id or f"row-{i}")


def _blank(value: Any) -> bool:
    return value is None or value == ""
