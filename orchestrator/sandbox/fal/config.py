"""Start-up settings of the fal sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.sandbox.common.config import ServerConfig, env_keys

# The documented development key, accepted when FAL_KEY is unset.
FAL_DEV_KEY = "sandbox-key-id:sandbox-key-secret"

FAL_MODELS = (
    "fal-ai/flux/dev",
    "fal-ai/flux/schnell",
    "fal-ai/flux-lora",
    "rundiffusion-fal/juggernaut-flux/lightning",
)
# fal's public prices per output megapixel (2026); Juggernaut Lightning's is not public (placeholder).
FAL_PRICES = {
    "fal-ai/flux/schnell": 0.003,
    "fal-ai/flux/dev": 0.025,
    "fal-ai/flux-lora": 0.035,
    "rundiffusion-fal/juggernaut-flux/lightning": 0.025,
}


def _fal_keys() -> tuple[str, ...]:
    return env_keys("FAL_KEY", FAL_DEV_KEY)


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
