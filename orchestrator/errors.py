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


class DomainError(Exception):
    """Base of errors with a stable problem type and HTTP status."""

    status = 400
    type = "about:blank"
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BatchRejected(DomainError):
    """The batch is invalid; nothing was written."""

    status = 422
    type = "https://orchestrator.dev/problems/invalid-batch"
    title = "The batch has invalid items"

    def __init__(self, problems: list[ItemProblem], detail: str | None = None):
        count = len(problems)
        super().__init__(detail or f"{count} problem{'s' if count != 1 else ''} found; nothing was written",
                         errors=[p.as_dict() for p in problems[:1000]], error_count=count)
        self.problems = problems


class ScheduleRejected(BatchRejected):
    """The schedule (its fields or its batch template) is invalid; nothing was saved."""

    type = "https://orchestrator.dev/problems/invalid-schedule"
    title = "The schedule is invalid"

    def __init__(self, problems: list[ItemProblem], detail: str | None = None):
        count = len(problems)
        super().__init__(problems, detail or f"{count} problem{'s' if count != 1 else ''} found; nothing was saved")


class TooLarge(DomainError):
    """The batch has more items than allowed."""

    status = 413
    type = "https://orchestrator.dev/problems/too-many-items"
    title = "Too many items"


class NotFound(DomainError):
    """No such resource for this tenant."""

    status = 404
    type = "https://orchestrator.dev/problems/not-found"
    title = "Not found"


class Conflict(DomainError):
    """The request conflicts with existing state."""

    status = 409
    type = "https://orchestrator.dev/problems/conflict"
    title = "Conflict"
