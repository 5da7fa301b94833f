"""Query and header parameters of the /v1 routes, as pydantic models.

orchestrator.api.operations.operation validates a request's parameters with them and documents them from here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    HttpUrl,
    UrlConstraints,
    WithJsonSchema,
)


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
