"""What the API answers: batches, jobs, schedules, estimates, budgets, prices, manifests, picks, problems.

Also the source of the response schemas in /v1/openapi.json.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)


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


class ScheduleRunOut(BaseModel):
    """One firing: its batch and catalog summary, or the problem that stopped it."""

    slot: str = Field(json_schema_extra={"format": "date-time"})
    status: str = Field(description="created or failed")
    error: str | None
    batch_id: str | None = Field(json_schema_extra={"format": "uuid"})
    batch_state: str | None
    summary: dict[str, Any] = Field(description="read / new / changed / unchanged / removed / failed (live)")
    created_at: str = Field(json_schema_extra={"format": "date-time"})


class ScheduleOut(BaseModel):
    """A schedule as the API returns it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    name: str
    cron: str
    timezone: str
    template: dict[str, Any]
    enabled: bool
    overlap_policy: str
    catchup_window_seconds: int
    next_run_at: str | None = Field(json_schema_extra={"format": "date-time"})
    last_run_at: str | None = Field(json_schema_extra={"format": "date-time"})
    last_batch_id: str | None = Field(json_schema_extra={"format": "uuid"})
    last_error: str | None = Field(default=None, description="why the latest firing made no batch; null after "
                                                             "a firing that did")
    last_runs: list[ScheduleRunOut] | None = Field(default=None, description="GET /v1/schedules/<id>: newest first")


class SchedulePage(BaseModel):
    """This tenant's schedules by name (one page: next_cursor is always null)."""

    data: list[ScheduleOut]
    next_cursor: str | None
