"""The fal queue API emulator: config, models, queue, runner, HTTP routes, wire details and webhooks."""

from orchestrator.sandbox.fal.config import FAL_DEV_KEY, FalConfig
from orchestrator.sandbox.fal.sandbox import FalSandbox

__all__ = ["FAL_DEV_KEY", "FalConfig", "FalSandbox"]
