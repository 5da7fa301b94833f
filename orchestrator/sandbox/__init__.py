"""Local emulators of the fal and Runware APIs, for tests, the demo and benchmarks.

`FalSandbox` and `RunwareSandbox` follow the providers' public HTTP APIs closely enough that the
providers' own Python clients work against them unchanged. Both run in a background thread::

    with FalSandbox(concurrency=4) as fal:
        fal.url, fal.jwks_url, fal.ledger, fal.set_faults(failure_rate=1.0)

Layout: `fal/` and `runware/` hold one emulator each, `common/` what both use (server life
cycle, faults, ledger, images, ids, webhook sender, shared config); `sandbox_env` (env.py)
builds the settings that point an orchestrator at running sandboxes. Nothing here imports
`orchestrator.providers`: an emulator written from the providers' documentation, not from the
adapters, is what lets the tests catch an adapter that misreads the API.
"""

from orchestrator.sandbox.common.faults import Faults
from orchestrator.sandbox.common.ledger import Ledger
from orchestrator.sandbox.env import sandbox_env
from orchestrator.sandbox.fal import FAL_DEV_KEY, FalConfig, FalSandbox
from orchestrator.sandbox.runware import RUNWARE_DEV_KEY, RunwareConfig, RunwareSandbox

__all__ = [
    "FAL_DEV_KEY",
    "RUNWARE_DEV_KEY",
    "FalConfig",
    "FalSandbox",
    "Faults",
    "Ledger",
    "RunwareConfig",
    "RunwareSandbox",
    "sandbox_env",
]
