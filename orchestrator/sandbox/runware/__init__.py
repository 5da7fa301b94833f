"""The Runware task API emulator: config, imageInference validation and the sandbox itself."""

from orchestrator.sandbox.runware.config import RUNWARE_DEV_KEY, RunwareConfig
from orchestrator.sandbox.runware.sandbox import RunwareSandbox

__all__ = ["RUNWARE_DEV_KEY", "RunwareConfig", "RunwareSandbox"]
