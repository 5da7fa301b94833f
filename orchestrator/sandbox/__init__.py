"""Local emulators of the fal and Runware APIs, for tests, the demo and benchmarks.

`FalSandbox` and `RunwareSandbox` follow the providers' public HTTP APIs closely enough that the
providers' own Python clients work against them unchanged. Both run in a background thread::

    with FalSandbox(concurrency=4) as fal:
        fal.url, fal.jwks_url, fal.ledger, fal.set_faults(failure_rate=1.0)
"""

from orchestrator.sandbox.config import FAL_DEV_KEY, RUNWARE_DEV_KEY, FalConfig, RunwareConfig
from orchestrator.sandbox.fal import FalSandbox
from orchestrator.sandbox.faults import Faults
from orchestrator.sandbox.ledger import Ledger
from orchestrator.sandbox.runware import RunwareSandbox

__all__ = [
    "FAL_DEV_KEY",
    "RUNWARE_DEV_KEY",
    "FalConfig",
    "FalSandbox",
    "Faults",
    "Ledger",
    "RunwareConfig",
    "RunwareSandbox",
]
