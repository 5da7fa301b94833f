"""Start-up settings of the Runware sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.sandbox.common.config import ServerConfig, env_keys

# The documented development key, accepted when RUNWARE_API_KEY is unset.
RUNWARE_DEV_KEY = "sandbox-runware-key"

RUNWARE_MODELS = ("rundiffusion:130@100", "runware:100@1", "runware:101@1")


def _runware_keys() -> tuple[str, ...]:
    return env_keys("RUNWARE_API_KEY", RUNWARE_DEV_KEY)


@dataclass
class RunwareConfig(ServerConfig):
    """Runware task API sandbox settings (generic imageInference limits by default)."""

    keys: tuple[str, ...] = field(default_factory=_runware_keys)
    models: tuple[str, ...] = RUNWARE_MODELS
    min_side: int = 128
    max_side: int = 2048
    side_step: int = 64
    max_number_results: int = 20
    min_prompt: int = 2
    max_prompt: int = 3000
    sync_timeout: float = 60.0  # sync POSTs that take longer answer 504; the task keeps running
    task_ttl: float = 3600.0  # how long getResponse knows a finished task
    media_ttl: float = 24 * 3600.0  # image URLs without a `ttl`
    capacity: int | None = None  # in-flight tasks per key before 429; None = unlimited
    # Runware's documented pacing: 250 ms doubling, capped at 8 s, with jitter; ~5 s to answer
    # (webhook_retries keeps the shared default of 10).
    webhook_timeout: float = 5.0
    webhook_backoff: float = 0.25
    webhook_backoff_max: float = 8.0
    webhook_jitter: float = 0.2
