"""Domain errors that the API turns into problem documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemProblem:
    """One invalid field of one batch item."""

    position: int | None
    custom_id: str | None
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form used in problem documents."""
        return {"position": self.position, "custom_id": self.custom_id, "field": self.field,
                "message": self.message}


PROBLEM_TYPES = "https://orchestrator.dev/problems/"


class DomainError(Exception):
    """Base of errors with a stable problem type and HTTP status.

    A subclass names its problem in the class line, e.g.
    `class NotFound(DomainError, status=404, slug="not-found", title="Not found")`: its `type` is
    PROBLEM_TYPES + slug. What it leaves out it inherits.
    """

    status = 400
    type = "about:blank"
    title = "Bad request"

    def __init_subclass__(cls, *, status: int | None = None, slug: str | None = None, title: str | None = None,
                          **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if slug is not None:
            cls.type = PROBLEM_TYPES + slug
        if title is not None:
            cls.title = title

    def __init__(self, detail: str, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BatchRejected(DomainError, status=422, slug="invalid-batch", title="The batch has invalid items"):
    """The batch is invalid; nothing was written."""

    def __init__(self, problems: list[ItemProblem], detail: str | None = None):
        count = len(problems)
        super().__init__(detail or f"{count} problem{'s' if count != 1 else ''} found; nothing was written",
                         errors=[p.as_dict() for p in problems[:1000]], error_count=count)
        self.problems = problems


class ScheduleRejected(BatchRejected, slug="invalid-schedule", title="The schedule is invalid"):
    """The schedule (its fields or its batch template) is invalid; nothing was saved."""

    def __init__(self, problems: list[ItemProblem], detail: str | None = None):
        count = len(problems)
        super().__init__(problems, detail or f"{count} problem{'s' if count != 1 else ''} found; nothing was saved")


class TooLarge(DomainError, status=413, slug="too-many-items", title="Too many items"):
    """The batch has more items than allowed."""


class NotFound(DomainError, status=404, slug="not-found", title="Not found"):
    """No such resource for this tenant."""


class Conflict(DomainError, status=409, slug="conflict", title="Conflict"):
    """The request conflicts with existing state."""
