"""`orchestrator sandbox fal|runware`: run a provider sandbox until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from orchestrator.sandbox import FalConfig, FalSandbox, Faults, RunwareConfig, RunwareSandbox
from orchestrator.sandbox.common.ledger import key_label
from orchestrator.sandbox.common.server import BaseSandbox

# (option, fault name, type, help); each maps one-to-one onto a Faults field.
_FAULT_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--latency-min", "latency_min", float, "Minimum generation latency, seconds."),
    ("--latency-max", "latency_max", float, "Maximum generation latency, seconds."),
    ("--failure-rate", "failure_rate", float, "Share of generations that fail."),
    ("--nsfw-rate", "nsfw_rate", float, "Share of images flagged NSFW."),
    ("--submit-429-rate", "submit_429_rate", float, "Share of submits answered 429."),
    ("--submit-500-rate", "submit_500_rate", float, "Share of submits answered 500."),
    ("--submit-503-rate", "submit_503_rate", float, "Share of submits answered 503."),
    ("--retry-after", "retry_after", float, "Retry-After seconds on injected 429/503."),
    ("--submit-slow-rate", "submit_slow_rate", float, "Share of submits delayed by --submit-slow-seconds."),
    ("--submit-slow-seconds", "submit_slow_seconds", float, "Delay of a slow submit."),
    ("--submit-timeout-rate", "submit_timeout_rate", float, "Share of submits that hang, then get no answer."),
    ("--webhook-drop-rate", "webhook_drop_rate", float, "Share of webhooks never sent."),
    ("--webhook-duplicate-rate", "webhook_duplicate_rate", float, "Share of webhooks sent twice."),
    ("--webhook-delay-rate", "webhook_delay_rate", float, "Share of webhooks held back."),
    ("--webhook-delay-seconds", "webhook_delay_seconds", float, "How long a delayed webhook is held."),
    ("--webhook-reorder-window", "webhook_reorder_window", float, "Buffer webhooks this long and shuffle them."),
    ("--result-ttl", "result_ttl", float, "Expire results this many seconds after completion."),
    ("--media-ttl", "media_ttl", float, "Expire image URLs this many seconds after creation."),
]


def _common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for flag, name, kind, help_text in reversed(_FAULT_OPTIONS):
        command = click.option(flag, name, type=kind, default=None, help=help_text)(command)
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        click.option("--port", type=int, default=None, help="Port to bind (default: a free one below 32768)."),
        click.option("--public-url", default=None, help="Base URL written into answers (default http://host:port)."),
        click.option(
            "--key", "keys", multiple=True, help="Accepted API key (repeatable; default from env or dev key)."
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="RNG seed for faults and seeds."),
        click.option("--fault", "extra_faults", multiple=True, metavar="NAME=JSON", help="Any fault knob."),
        click.option("--webhook-retries", type=int, default=None, help="Retries after a failed webhook."),
        click.option("--webhook-backoff", type=float, default=None, help="First retry delay, seconds (doubles)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _faults(params: dict[str, Any]) -> Faults:
    changes: dict[str, Any] = {}
    for _, name, _, _ in _FAULT_OPTIONS:
        value = params.pop(name)
        if value is not None:
            changes[name] = value
    for item in params.pop("extra_faults", ()):
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=JSON, got {item!r}", param_hint="--fault")
        changes[name.strip()] = json.loads(raw)
    try:
        return Faults.from_env().with_changes(changes)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc)) from exc


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {"faults": _faults(params)}
    for name, value in params.items():
        if name == "keys":
            if value:
                settings["keys"] = tuple(value)
        elif value is not None:
            settings[name] = value
    return settings


def _serve(sandbox: BaseSandbox, keys: tuple[str, ...]) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sandbox.start()
    labels = ", ".join(key_label(k) for k in keys)
    click.echo(f"{sandbox.provider} sandbox on {sandbox.url} (keys: {labels}); admin at {sandbox.url}/_sandbox/")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        click.echo(f"{sandbox.provider} sandbox stopped")


@click.group()
def sandbox() -> None:
    """Run a local emulator of a provider's API (fal or Runware)."""


@sandbox.command()
@_common_options
@click.option("--concurrency", type=int, default=None, help="Running requests per key (default 2).")
@click.option("--user-id", default=None, help="X-Fal-Webhook-User-Id of webhooks.")
@click.option("--keepalive-interval", type=float, default=None, help="SSE keep-alive period, seconds.")
def fal(**params: Any) -> None:
    """Serve the fal queue API, signed webhooks and a JWKS."""
    config = FalConfig(**_settings(params))
    _serve(FalSandbox(config), config.keys)


@sandbox.command()
@_common_options
@click.option("--capacity", type=int, default=None, help="In-flight tasks per key before 429 (default unlimited).")
@click.option("--sync-timeout", type=float, default=None, help="Sync window before a 504, seconds.")
@click.option("--webhook-flat", is_flag=True, default=False, help="POST the item itself, not {'data':[item]}.")
def runware(**params: Any) -> None:
    """Serve Runware's POST /v1 task API with webhooks and uploads."""
    if params.pop("webhook_flat"):
        params.setdefault("extra_faults", ())
        params["extra_faults"] = (*params["extra_faults"], "webhook_flat=true")
    config = RunwareConfig(**_settings(params))
    _serve(RunwareSandbox(config), config.keys)
