"""Start-up settings of the fal and Runware sandboxes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from orchestrator.sandbox.faults import Faults

# Documented development keys, accepted when the real variables are unset.
FAL_DEV_KEY = "sandbox-key-id:sandbox-key-secret"
RUNWARE_DEV_KEY = "sandbox-runware-key"

FAL_MODELS = (
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
    "fal-ai/flux-lora",
    "rundiffusion-fal/juggernaut-flux/lightning",
)
RUNWARE_MODELS = ("rundiffusion:130@100", "runware:100@1", "runware:101@1")
# fal's public prices per output megapixel (2026); Juggernaut Lightning's is not public (placeholder).
FAL_PRICES = {
    "fal-ai/flux/schnell": 0.003,
    "fal-ai/flux/dev": 0.025,
    "fal-ai/flux-lora": 0.035,
    "rundiffusion-fal/juggernaut-flux/lightning": 0.025,
}


def _env_keys(name: str, fallback: str) -> tuple[str, ...]:
    value = os.environ.get(name, "").strip()
    return (value,) if value else (fallback,)


def _fal_keys() -> tuple[str, ...]:
    return _env_keys("FAL_KEY", FAL_DEV_KEY)


def _runware_keys() -> tuple[str, ...]:
    return _env_keys("RUNWARE_API_KEY", RUNWARE_DEV_KEY)


@dataclass
class ServerConfig:
    """Where a sandbox listens and the base URL it writes into its answers."""

    host: str = "127.0.0.1"
    port: int | None = None  # None or 0: pick a free port below 32768
    public_url: str | None = None  # default http://host:port
    seed: int | None = 0  # RNG seed for faults, seeds and latencies; None = nondeterministic
    faults: Faults = field(default_factory=Faults.from_env)
    webhook_max_connections: int = 512
    render_threads: int = 4
    # Webhook delivery: attempts time out after webhook_timeout; retry n waits backoff * 2**(n-1), capped, +- jitter.
    webhook_timeout: float = 15.0
    webhook_retries: int = 10
    webhook_backoff: float = 10.0
    webhook_backoff_max: float = 1800.0
    webhook_jitter: float = 0.1


@dataclass
class FalConfig(ServerConfig):
    """fal queue sandbox settings (defaults follow fal's documented behaviour)."""

    keys: tuple[str, ...] = field(default_factory=_fal_keys)
    user_id: str = "sandbox-user"  # sent as X-Fal-Webhook-User-Id
    models: tuple[str, ...] = FAL_MODELS
    concurrency: int = 2  # running requests per key; the rest wait in the queue
    result_ttl: float = 3600.0
    large_result_ttl: float = 360.0
    large_result_bytes: int = 10 * 1024
    media_ttl: float = 7 * 24 * 3600.0
    keepalive_interval: float = 15.0  # SSE comment period
    result_pending_status: int = 400  # result fetched before COMPLETED
    cancel_queued_status: int = 202  # 200 answers {"status":"OK"} instead
    max_image_side: int = 14142
    max_num_images: int = 4
    # USD per megapixel; each image is billed rounded up to whole megapixels of 1024 x 1024 pixels.
    prices: dict[str, float] = field(default_factory=lambda: dict(FAL_PRICES))


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
    # Runware's documented pacing: 250 ms doubling, capped at 8 s, with jitter; ~5 s to answer.
    webhook_timeout: float = 5.0
    webhook_retries: int = 10
    webhook_backoff: float = 0.25
    webhook_backoff_max: float = 8.0
    webhook_jitter: float = 0.2
