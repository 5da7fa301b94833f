"""What clients send: batch requests (items, matrix, catalog), schedules and the other request bodies of the API.

The API documents them in /v1/openapi.json; the answers are in orchestrator.responses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    field_validator,
    model_validator,
)

Scalar = str | int | float | bool | None


class Size(BaseModel):
    """Explicit image dimensions."""

    model_config = ConfigDict(extra="forbid")
    width: int
    height: int


class Lora(BaseModel):
    """A LoRA: fal path/URL or Runware AIR id, and its weight."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=2000)
    scale: float = 1.0


class CommonParams(BaseModel):
    """Generation parameters shared by every model; `native` passes provider fields through."""

    model_config = ConfigDict(extra="forbid")
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    image_size: str | Size | None = Field(default=None, description="fal size preset or {width, height}")
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int | None = None
    output_format: Literal["jpeg", "jpg", "png", "webp"] | None = None
    loras: list[Lora] | None = None
    native: dict[str, Any] | None = Field(default=None, description="provider-native fields, validated per model")


class Defaults(CommonParams):
    """Batch-wide defaults applied under each item's own values."""

    model: str | None = None


class Item(CommonParams):
    """One job of an explicit batch."""

    custom_id: str | None = Field(default=None, min_length=1, max_length=200)
    model: str | None = None
    prompt: str


class Matrix(CommonParams):
    """Ideation: every prompt x seed (or variant) x size x style."""

    model: str | None = None
    prompts: list[str] = Field(min_length=1)
    seeds: list[int] | None = None
    variants: int | None = Field(default=None, ge=1, le=1000)
    sizes: list[str | Size] | None = None
    styles: list[str] | None = None

    @model_validator(mode="after")
    def _seeds_or_variants(self) -> Matrix:
        if self.seeds is not None and self.variants is not None:
            raise ValueError("give seeds or variants, not both")
        return self


class Catalog(CommonParams):
    """Catalog generation: one job per row, prompt from a `{field}` template.

    Rows come inline or, in a schedule, from a `source` read at each firing. With
    `only_changed`, rows whose content key already has a stored image in this catalog are
    not generated again (see orchestrator.catalog_runs).
    """

    model: str | None = None
    template: str = Field(min_length=1)
    rows: list[dict[str, Scalar]] | None = Field(default=None, min_length=1)
    source: str | None = Field(default=None, max_length=2000,
                               description="storage:<key> (under your tenant) or an https:// URL; CSV or JSONL")
    source_format: Literal["csv", "jsonl"] | None = Field(default=None, description="default: from the name")
    id_field: str | None = Field(default=None, description="row field used as custom_id")
    name: str | None = Field(default=None, min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                             description="the catalog whose stored images only_changed reuses")
    only_changed: bool | None = Field(default=None, description="skip rows whose image is stored and unchanged "
                                                                 "(default: true in schedules, false otherwise)")
    prune: bool = Field(default=False, description="delete the images of rows that disappeared")
    key_pattern: str | None = Field(default=None, max_length=500,
                                    description="stable object key from row fields, e.g. catalog/{sku}/{n}.{ext}")

    @model_validator(mode="after")
    def _rows_or_source(self) -> Catalog:
        if (self.rows is None) == (self.source is None):
            raise ValueError("give exactly one of rows or source")
        return self


class BatchRequest(BaseModel):
    """POST /v1/batches: exactly one of items, matrix or catalog."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "fox mood board", "items": [{"custom_id": "fox-1", "model": "flux-schnell",
                                              "prompt": "a red fox in fresh snow"}]},
        {"name": "fox variants", "lane": "bulk", "matrix": {"model": "flux-schnell", "prompts": ["a red fox"],
                                                           "variants": 2, "sizes": ["square", "landscape_4_3"]}},
    ]})
    name: str = Field(default="", max_length=200)
    lane: Literal["interactive", "bulk"] = "interactive"
    callback_url: Annotated[HttpUrl, UrlConstraints(max_length=2000)] | None = Field(
        default=None, description="POSTed batch.completed; must be a public address")
    unknown_outcome: Literal["wait", "resubmit"] | None = Field(
        default=None, description="a fal submit whose answer was lost: wait out fal's webhook retries "
        "(default ORCH_UNKNOWN_OUTCOME_POLICY) or resubmit after the callback timeout, which may pay twice")
    metadata: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults | None = None
    items: list[Item] | None = Field(default=None, min_length=1)
    matrix: Matrix | None = None
    catalog: Catalog | None = None
    max_cost_usd: float | None = Field(default=None, gt=0, le=1_000_000,
                                       description="dispatch never lets this batch's spend pass this many USD")
    dry_run: bool = Field(default=False, description="validate and estimate only (answers an Estimate); "
                                                     "nothing is written")

    @model_validator(mode="after")
    def _exactly_one_form(self) -> BatchRequest:
        given = [n for n in ("items", "matrix", "catalog") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of items, matrix or catalog")
        return self

    @field_validator("max_cost_usd", mode="before")
    @classmethod
    def _no_bool_cost(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number of USD")
        return v

    @field_validator("callback_url")
    @classmethod
    def _http_only(cls, v: HttpUrl | None) -> HttpUrl | None:
        if v is not None and v.scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return v


class BudgetIn(BaseModel):
    """PUT /v1/budget: caps in USD (null removes one); fields not given keep their value."""

    daily_usd: float | str | None = None
    monthly_usd: float | str | None = None
    timezone: str | None = Field(default=None, description="IANA name, e.g. Europe/Berlin (default UTC)")


class BatchPatch(BaseModel):
    """PATCH /v1/batches/<id>: change the batch's cap (null removes it)."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: float | str | None


class PicksIn(BaseModel):
    """POST /v1/batches/<id>/picks: images (asset ids, as in the results manifest) to pick and un-pick."""

    model_config = ConfigDict(extra="forbid")
    add: list[str] = Field(default_factory=list, max_length=5000)
    remove: list[str] = Field(default_factory=list, max_length=5000)


class RerenderIn(BaseModel):
    """POST /v1/batches/<id>/rerender: which images or jobs (none = all), on which model, same or new seeds."""

    model_config = ConfigDict(extra="forbid")
    asset_ids: list[str] = Field(default_factory=list, max_length=10_000, description="single images (seed kept)")
    job_ids: list[str] = Field(default_factory=list, max_length=10_000, description="whole jobs")
    picks: bool = Field(default=False, description="re-render the batch's picks")
    model: str | None = Field(default=None, max_length=200, description="target model; default: each job's own")
    new_seeds: bool = Field(default=False, description="draw new seeds (variations) instead of reusing them")
    name: str | None = Field(default=None, max_length=200)


class ScheduleIn(BaseModel):
    """POST /v1/schedules (PATCH takes any subset)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "nightly foxes", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
         "template": {"items": [{"custom_id": "fox", "model": "flux-schnell", "prompt": "a red fox"}]}}]})
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=120, description="five-field cron expression")
    timezone: str = "UTC"
    template: dict[str, Any] = Field(description="a POST /v1/batches body run at every slot")
    enabled: bool = True
    overlap_policy: Literal["skip", "queue", "allow"] = "skip"
    catchup_window_seconds: int = Field(default=3600, ge=0, le=7 * 24 * 3600)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("must be a valid five-field cron expression, e.g. '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Berlin") from None
        return value


def _no_defaults(schema: dict[str, Any]) -> None:
    # An absent field means "unchanged", not null: the document must not claim a null default.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class ScheduleUpdate(BaseModel):
    """PATCH /v1/schedules/<id>: any subset of the schedule's fields (the result is validated as a whole)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_defaults)
    name: str = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    cron: str = Field(default=None, min_length=1, max_length=120)  # type: ignore[assignment]
    timezone: str = Field(default=None, min_length=1, max_length=64)  # type: ignore[assignment]
    template: dict[str, Any] = Field(default=None)  # type: ignore[assignment]
    enabled: bool = Field(default=None)  # type: ignore[assignment]
    overlap_policy: Literal["skip", "queue", "allow"] = Field(default=None)  # type: ignore[assignment]
    catchup_window_seconds: int = Field(default=None, ge=0, le=7 * 24 * 3600)  # type: ignore[assignment]
