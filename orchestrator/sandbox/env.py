"""The environment that points an orchestrator (API and workers) at running sandboxes.

Written once here for the embedded stack, the end-to-end tests and the benchmarks, so they
cannot drift apart: the development keys, the provider base URLs, fal's JWKS, and the download
allow-list for the hosts that serve the sandboxes' images.
"""

from __future__ import annotations

from orchestrator.sandbox.fal.config import FAL_DEV_KEY
from orchestrator.sandbox.runware.config import RUNWARE_DEV_KEY


def sandbox_env(fal_url: str | None = None, runware_url: str | None = None) -> dict[str, str]:
    """ORCH_* settings (and provider keys) for the sandboxes at `fal_url` and `runware_url` (base URLs)."""
    env = {"FAL_KEY": FAL_DEV_KEY, "RUNWARE_API_KEY": RUNWARE_DEV_KEY}
    hosts = []
    if fal_url is not None:
        env["ORCH_FAL_QUEUE_URL"] = fal_url
        env["ORCH_FAL_JWKS_URL"] = f"{fal_url}/.well-known/jwks.json"
        hosts.append(fal_url.split("//", 1)[1])
    if runware_url is not None:
        env["ORCH_RUNWARE_API_URL"] = f"{runware_url}/v1"
        hosts.append(runware_url.split("//", 1)[1])
    if hosts:
        env["ORCH_DOWNLOAD_ALLOWED_HOSTS"] = ",".join(hosts)
        env["ORCH_DOWNLOAD_ALLOW_PRIVATE"] = "true"  # the sandboxes serve their images on loopback
    return env
