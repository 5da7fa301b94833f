"""fal queue state: one record per request and a per-key queue where `low` priority waits behind `normal`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.sandbox.fal.models import FalInput

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"


def app_path(endpoint: str) -> str:
    """`owner/app` of an endpoint id, keeping a leading `workflows`/`comfy` namespace segment."""
    parts = endpoint.strip("/").split("/")
    keep = 3 if parts[0] in ("workflows", "comfy") else 2
    return "/".join(parts[:keep])


@dataclass(eq=False)  # identity equality: deque.remove/index must find this very request
class FalRequest:
    """One queued request and, once done, its result as the model produced it."""

    id: str
    model: str
    key: str
    params: FalInput | None
    invalid: list[dict[str, Any]] | None  # 422 detail when the input failed validation
    webhook_url: str | None
    priority: str = "normal"
    state: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.time)
    logs: list[dict[str, Any]] = field(default_factory=list)
    result_status: int = 0
    result_body: Any = None
    result_headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None  # monotonic; set on completion
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def app(self) -> str:
        """The `owner/app` part used by status, result and cancel URLs."""
        return app_path(self.model)

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a log line in fal's RequestLog shape."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.logs.append({"message": message, "level": level, "source": "USER", "timestamp": stamp})

    def expired(self) -> bool:
        """Whether the retention period after completion has passed."""
        return self.expires_at is not None and time.monotonic() >= self.expires_at


class KeyQueue:
    """Waiting requests of one API key, plus how many of its requests are running."""

    def __init__(self) -> None:
        self.normal: deque[FalRequest] = deque()
        self.low: deque[FalRequest] = deque()
        self.running = 0

    def push(self, request: FalRequest) -> None:
        """Append a waiting request behind others of its priority."""
        (self.low if request.priority == "low" else self.normal).append(request)

    def pop(self) -> FalRequest | None:
        """Take the next request to run: every `normal` one before any `low` one."""
        if self.normal:
            return self.normal.popleft()
        if self.low:
            return self.low.popleft()
        return None

    def remove(self, request: FalRequest) -> bool:
        """Take a waiting request out of the queue; False if it was not waiting."""
        for lane in (self.normal, self.low):
            try:
                lane.remove(request)
            except ValueError:
                continue
            return True
        return False

    def position(self, request: FalRequest) -> int:
        """Number of requests ahead of `request` (0-based)."""
        if request.priority == "low":
            return len(self.normal) + _index(self.low, request)
        return _index(self.normal, request)

    def __len__(self) -> int:
        return len(self.normal) + len(self.low)


def _index(lane: deque[FalRequest], request: FalRequest) -> int:
    try:
        return lane.index(request)
    except ValueError:
        return 0
