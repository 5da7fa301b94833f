"""Request and response shapes of the public API (also the source of /v1/openapi.json)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    WithJsonSchema,
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


def Timestamp() -> Any:
    """A timestamp field: RFC 3339, UTC with its offset."""
    return Field(json_schema_extra={"format": "date-time"})


def Uuid() -> Any:
    """An id field."""
    return Field(json_schema_extra={"format": "uuid"})


class BatchOut(BaseModel):
    """A batch as the API returns it."""

    id: str = Uuid()
    name: str
    lane: str
    state: str
    total: int
    counts: dict[str, int]
    cost: float = Field(description="USD recorded so far: reported by the provider or priced from the table")
    estimated_cost: float = Field(description="USD estimated at submit from the price table")
    max_cost_usd: float | None
    held_by_budget: int = Field(description="queued jobs waiting because a budget cap would be crossed")
    callback_url: str | None
    unknown_outcome: str | None = Field(default=None, description="the batch's own unknown-outcome policy, if set")
    metadata: dict[str, Any]
    created_at: str = Timestamp()
    started_at: str | None = Timestamp()
    completed_at: str | None = Timestamp()
    catalog: dict[str, Any] | None = Field(default=None, description="catalog batches: rows read / new / changed / "
                                                                     "unchanged / removed / failed")
    parent_batch_id: str | None = Field(default=None, description="the batch this one re-renders, if any")
    schedule_id: str | None = Field(default=None, json_schema_extra={"format": "uuid"},
                                    description="the schedule that created this batch, if any")


class CancelOut(BatchOut):
    """The batch after a cancel, with how many jobs were cancelled."""

    cancelled_jobs: int


class RetryOut(BatchOut):
    """The batch after a retry, with how many failed jobs were re-queued."""

    requeued_jobs: int


class JobOut(BaseModel):
    """A job as the API returns it."""

    id: str = Uuid()
    batch_id: str = Uuid()
    position: int
    custom_id: str
    model: str
    requested_model: str
    provider: str
    state: str
    attempt: int
    params: dict[str, Any]
    provider_request_id: str | None
    error_code: str | None
    error_message: str | None
    cost: float | None
    cost_source: Literal["reported", "priced"] | None
    estimated_cost: float | None
    hold_reason: Literal["budget"] | None = Field(description="why a queued job waits")
    created_at: str = Timestamp()
    completed_at: str | None = Timestamp()


class JobEventOut(BaseModel):
    """One entry of a job's timeline."""

    model_config = ConfigDict(populate_by_name=True)
    kind: str
    attempt: int
    from_: str | None = Field(alias="from")
    to: str | None
    detail: dict[str, Any]
    at: str = Timestamp()


class JobDetail(JobOut):
    """A job with its timeline."""

    events: list[JobEventOut]


class BatchPage(BaseModel):
    """A page of batches, newest first; pass next_cursor as `cursor` for the next page."""

    data: list[BatchOut]
    next_cursor: str | None


class JobPage(BaseModel):
    """A page of jobs by position; pass next_cursor as `cursor` for the next page."""

    data: list[JobOut]
    next_cursor: str | None


class ModelsOut(BaseModel):
    """The model catalog and the family aliases."""

    data: list[dict[str, Any]]
    aliases: dict[str, list[str]]


class ModelEstimate(BaseModel):
    """The estimate for one provider and model."""

    provider: str
    model: str
    jobs: int
    images: int
    megapixels: float
    cost: float


class BudgetOut(BaseModel):
    """A tenant's caps and its spend today and this month (its timezone's calendar)."""

    tenant: str
    timezone: str
    daily_usd: float | None
    monthly_usd: float | None
    spent_today_usd: float
    spent_this_month_usd: float
    currency: str


class BudgetIn(BaseModel):
    """PUT /v1/budget: caps in USD (null removes one); fields not given keep their value."""

    daily_usd: float | str | None = None
    monthly_usd: float | str | None = None
    timezone: str | None = Field(default=None, description="IANA name, e.g. Europe/Berlin (default UTC)")


class EstimateBudget(BudgetOut):
    """The tenant's budget as a dry run sees it, with the batch's own cap."""

    max_cost_usd: float | None


class Estimate(BaseModel):
    """A dry run's answer: what the batch would cost, per provider and model; nothing was written."""

    dry_run: Literal[True]
    jobs: int
    images: int
    megapixels: float = Field(description="billed megapixels (fal rounds each image up)")
    estimated_cost: float = Field(description="USD on each job's first model")
    cost_range: dict[str, float] = Field(description="min and max USD if family aliases fail over")
    by_model: list[ModelEstimate]
    currency: str
    budget: EstimateBudget


class BatchPatch(BaseModel):
    """PATCH /v1/batches/<id>: change the batch's cap (null removes it)."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: float | str | None


class PriceOut(BaseModel):
    """One model's price."""

    model: str
    provider: str
    usd_per_megapixel: float
    megapixel_rounding: str
    source: str


class PricesOut(BaseModel):
    """The price table in use: defaults with ORCH_PRICES applied."""

    data: list[PriceOut]
    currency: str


class CallbackSecretOut(BaseModel):
    """This tenant's Standard Webhooks signing secret."""

    secret: str


class ManifestImage(BaseModel):
    """One stored image of a job in the results manifest."""

    asset_id: str | None = Field(default=None, description="the image's id (for picks and re-render)")
    index: int
    storage_key: str
    url: str
    sha256: str | None
    width: int | None
    height: int | None
    content_type: str | None
    bytes: int | None
    seed: int | None
    nsfw: bool | None
    cost: float | None
    cost_source: Literal["reported", "priced"] | None


class ManifestError(BaseModel):
    """Why a job failed."""

    code: str | None
    message: str | None


class ManifestLine(BaseModel):
    """One line of the JSONL results manifest: one job."""

    custom_id: str
    position: int
    job_id: str
    status: str
    model: str
    provider: str
    prompt: str | None
    images: list[ManifestImage]
    seed: int | None
    cost: float | None
    cost_source: Literal["reported", "priced"] | None
    error: ManifestError | None


class ProblemItem(BaseModel):
    """One problem of a rejected request: which item (position, custom_id) and which field."""

    position: int | None
    custom_id: str | None
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemItem] | None = None
    error_count: int | None = None


# ---- query and header parameters (validated by orchestrator.api.spec, documented from here) ----

def _state_param(values: tuple[str, ...]) -> Any:
    """One `state` query value: a state, or several separated by commas."""
    one = "|".join(values)

    def check(value: str) -> str:
        for part in value.split(","):
            if part not in values:
                raise ValueError(f"unknown state {part!r}; use one of {', '.join(values)}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": f"^({one})(,({one}))*$"})]


BatchStateParam = _state_param(("queued", "running", "succeeded", "partially_failed", "failed", "cancelled"))
JobStateParam = _state_param(("queued", "submitting", "submitted", "storing", "succeeded", "failed", "cancelled"))
STATE_HELP = "only these states; repeat the parameter or separate with commas"


class _PageQuery(BaseModel):
    cursor: str | None = Field(default=None, min_length=1, max_length=200,
                               description="next_cursor of the previous page")
    limit: int = Field(default=100, ge=1, le=500, description="page size")


class BatchListQuery(_PageQuery):
    """GET /v1/batches query."""

    state: list[BatchStateParam] = Field(default_factory=list, max_length=20, description=STATE_HELP)
    schedule_id: uuid.UUID | None = Field(default=None, description="only batches this schedule created")
    provider: Literal["fal", "runware"] | None = Field(default=None, description="batches with a job on this provider")
    model: str | None = Field(default=None, max_length=200, description="batches with a job on this model or alias")
    lane: Literal["interactive", "bulk"] | None = None
    q: str | None = Field(default=None, min_length=1, max_length=200, description="search in names and prompts")
    parent_batch_id: uuid.UUID | None = Field(default=None, description="re-renders of this batch")


class JobListQuery(_PageQuery):
    """GET /v1/batches/<id>/jobs query."""

    state: list[JobStateParam] = Field(default_factory=list, max_length=20, description=STATE_HELP)


class BatchOptions(BaseModel):
    """POST /v1/batches query: batch options for a JSONL body (a JSON body carries them itself)."""

    name: str | None = Field(default=None, max_length=200)
    lane: Literal["interactive", "bulk"] | None = None
    # Validated as a URL even with a JSON body (which ignores it), so the document tells the truth.
    callback_url: Annotated[HttpUrl, UrlConstraints(max_length=2000)] | None = None
    unknown_outcome: Literal["wait", "resubmit"] | None = None
    model: str | None = Field(default=None, max_length=200, description="default model of every line")
    max_cost_usd: str | None = Field(default=None, max_length=40, description="the batch's USD cap")
    dry_run: str | None = Field(default=None, max_length=5, description="true: estimate only, write nothing")


class BatchHeaders(BaseModel):
    """POST /v1/batches headers."""

    idempotency_key: str | None = Field(default=None, alias="Idempotency-Key", min_length=1, max_length=200,
                                        description="a replay with the same key and body returns the same batch")


class PicksIn(BaseModel):
    """POST /v1/batches/<id>/picks: images (asset ids, as in the results manifest) to pick and un-pick."""

    model_config = ConfigDict(extra="forbid")
    add: list[str] = Field(default_factory=list, max_length=5000)
    remove: list[str] = Field(default_factory=list, max_length=5000)


class PickOut(BaseModel):
    """One picked image with a fresh presigned link."""

    asset_id: str = Uuid()
    job_id: str = Uuid()
    custom_id: str
    position: int
    index: int
    prompt: str | None
    seed: int | None
    width: int | None
    height: int | None
    provider: str
    model: str
    sha256: str | None
    content_type: str | None
    bytes: int | None
    storage_key: str
    url: str


class PicksOut(BaseModel):
    """A batch's picks (after a change, with how many were added and removed)."""

    data: list[PickOut]
    added: int = 0
    removed: int = 0


class RerenderIn(BaseModel):
    """POST /v1/batches/<id>/rerender: which images or jobs (none = all), on which model, same or new seeds."""

    model_config = ConfigDict(extra="forbid")
    asset_ids: list[str] = Field(default_factory=list, max_length=10_000, description="single images (seed kept)")
    job_ids: list[str] = Field(default_factory=list, max_length=10_000, description="whole jobs")
    picks: bool = Field(default=False, description="re-render the batch's picks")
    model: str | None = Field(default=None, max_length=200, description="target model; default: each job's own")
    new_seeds: bool = Field(default=False, description="draw new seeds (variations) instead of reusing them")
    name: str | None = Field(default=None, max_length=200)
