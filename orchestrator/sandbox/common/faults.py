"""Failure-injection knobs shared by both sandboxes, and the seeded dice that roll them."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any

FAULTS_ENV = "ORCH_SANDBOX_FAULTS"


@dataclass(frozen=True)
class Faults:
    """Every knob is off by default; rates are probabilities in [0, 1] where 0 and 1 are exact."""

    # Generation: latency is uniform in [latency_min, latency_max] seconds per request (fal) or image (Runware).
    latency_min: float = 0.05
    latency_max: float = 0.2
    failure_rate: float = 0.0
    # fal: 422 (content policy), 500, 502, 503 or 504; Runware: 500 -> timeoutProvider,
    # 422 -> contentPolicyViolation, anything else -> inferenceError.
    failure_status: int = 500
    nsfw_rate: float = 0.0
    payload_error_rate: float = 0.0  # fal: webhook OK with payload null

    # Submit (fal POST /{model}, Runware POST /v1): whole-request rejections, checked in this order.
    submit_429_rate: float = 0.0
    submit_402_rate: float = 0.0  # Runware insufficientCredits
    submit_500_rate: float = 0.0
    submit_502_rate: float = 0.0
    submit_503_rate: float = 0.0
    submit_504_rate: float = 0.0
    retry_after: float = 1.0  # seconds, sent as Retry-After on 429/503
    # fal: share of injected 5xx that carry x-fal-request-id (the rest look like an nginx ingress page).
    submit_5xx_request_id_rate: float = 0.5
    submit_fault_budget: int | None = None  # stop injecting submit errors after this many; None = no cap
    submit_slow_rate: float = 0.0
    submit_slow_seconds: float = 2.0
    submit_timeout_rate: float = 0.0  # hold the submit, then drop the connection without an answer
    submit_timeout_seconds: float = 30.0
    submit_timeout_accepts: bool = False  # the timed-out submit was still accepted and runs
    # fal: hold the answer this long after the request was queued, so its webhook can come first.
    submit_answer_delay_seconds: float = 0.0
    poll_500_rate: float = 0.0  # fal status/result, Runware getResponse

    # Webhooks.
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_duplicates: int = 1  # extra copies per duplicated delivery
    webhook_duplicate_concurrent: bool = False
    webhook_delay_rate: float = 0.0
    webhook_delay_seconds: float = 1.0
    webhook_reorder_window: float = 0.0  # seconds: buffer deliveries this long, then send them shuffled
    webhook_bad_signature_rate: float = 0.0  # fal
    webhook_stale_timestamp_rate: float = 0.0  # fal: timestamp 10 minutes old
    webhook_unknown_key_rate: float = 0.0  # fal: signed with a key missing from the JWKS
    webhook_flat: bool = False  # Runware: the item itself instead of {"data":[item]}
    webhook_send_failures: bool = True  # Runware: POST {"errors":[...]} for a failed image

    # Runware uploadEndpoint: the PUT comes this long after the webhook (late), never (skipped),
    # or carries a truncated file (corrupted; the PUT itself succeeds, as a cut-off stream would).
    upload_delay_seconds: float = 0.0
    upload_drop_rate: float = 0.0
    upload_corrupt_rate: float = 0.0

    # Early expiry: seconds after completion; None keeps the provider's normal retention.
    result_ttl: float | None = None
    media_ttl: float | None = None

    # Per-model overrides, e.g. {"fal-ai/flux/dev": {"failure_rate": 1.0}}.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{f.name} must be within [0, 1], got {value}")
        if self.latency_min < 0 or self.latency_max < self.latency_min:
            raise ValueError("need 0 <= latency_min <= latency_max")
        for model, overrides in self.models.items():
            unknown = set(overrides) - (_field_names() - {"models"})
            if unknown:
                raise ValueError(f"unknown fault(s) for model {model}: {sorted(unknown)}")

    def with_changes(self, changes: dict[str, Any]) -> Faults:
        """Return a copy with `changes` applied; unknown names raise ValueError."""
        unknown = set(changes) - _field_names()
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def for_model(self, model: str) -> Faults:
        """Return the faults that apply to `model` (its overrides on top of the global knobs)."""
        overrides = self.models.get(model)
        return dataclasses.replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return dataclasses.asdict(self)

    @classmethod
    def from_env(cls) -> Faults:
        """Build from the JSON object in ORCH_SANDBOX_FAULTS (empty or unset = defaults)."""
        raw = os.environ.get(FAULTS_ENV, "").strip()
        return cls().with_changes(json.loads(raw)) if raw else cls()


def _field_names() -> set[str]:
    return {f.name for f in fields(Faults)}


class Dice:
    """A seeded RNG shared by one sandbox; rates of exactly 0 or 1 never consult it."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def chance(self, rate: float) -> bool:
        """Return True with probability `rate`."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._rng.random() < rate

    def uniform(self, low: float, high: float) -> float:
        """Return a float in [low, high]."""
        if high <= low:
            return low
        with self._lock:
            return self._rng.uniform(low, high)

    def bits(self, k: int) -> int:
        """Return a random non-negative int of `k` bits."""
        with self._lock:
            return self._rng.getrandbits(k)

    def shuffle(self, items: list[Any]) -> None:
        """Shuffle `items` in place."""
        with self._lock:
            self._rng.shuffle(items)

    def pick_status(self, rates: list[tuple[int, float]]) -> int | None:
        """Roll each (status, rate) pair in order; return the first status hit, or None."""
        for status, rate in rates:
            if self.chance(rate):
                return status
        return None
