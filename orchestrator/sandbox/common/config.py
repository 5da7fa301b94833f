"""Start-up settings both sandboxes share: where they listen, their seed, faults and webhook pacing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from orchestrator.sandbox.common.faults import Faults


def env_keys(name: str, fallback: str) -> tuple[str, ...]:
    """The API key in environment variable `name`, else the documented development key."""
    value = os.environ.get(name, "").strip()
    return (value,) if value else (fallback,)


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
