"""`orchestrator demo` and `orchestrator up`: the product on the embedded default."""

from __future__ import annotations

import shutil
import signal
import statistics
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.admin import new_key
from orchestrator.cli.api_client import Api, CliError
from orchestrator.cli.downloads import save_results
from orchestrator.cli.embedded import EmbeddedStack
from orchestrator.cli.progress import print_table
from orchestrator.cli.results import fetch_manifest
from orchestrator.cli.watch import follow
from orchestrator.netutil import free_port, port_is_free

SUBJECTS = ["a lighthouse on a cliff", "a koi pond at dawn", "a neon ramen stall", "a desert caravan",
            "a glass greenhouse", "a paper lantern festival", "an alpine cabin in snow", "a coral reef",
            "a brutalist library", "a lavender field", "a rainy Tokyo crossing", "a tiny robot gardener"]
MODELS = ("fal-ai/flux/schnell", "runware:100@1")


def mood_board(prompts: int, seeds: int) -> dict[str, Any]:
    """A sample ideation batch: prompts x seeds, half on fal, half on Runware."""
    items = []
    for p in range(prompts):
        subject = SUBJECTS[p % len(SUBJECTS)]
        model = MODELS[0] if p < (prompts + 1) // 2 else MODELS[1]
        for s in range(seeds):
            items.append({"custom_id": f"p{p:02d}-s{s}", "model": model, "seed": 1000 + s,
                          "prompt": f"{subject}, moody editorial photograph", "width": 512, "height": 384})
    return {"name": "demo mood board", "lane": "interactive", "items": items}


def _create_key(stack: EmbeddedStack, tenant: str = "demo") -> str:
    assert stack.settings is not None
    return new_key(stack.settings, tenant, role="admin", name="embedded")[1]


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("orchestrator-demo"), show_default=True,
              help="where the images, manifest and contact sheet go")
@click.option("--prompts", type=click.IntRange(1, 200), default=12, show_default=True)
@click.option("--seeds", type=click.IntRange(1, 20), default=4, show_default=True)
def demo(out: Path, prompts: int, seeds: int) -> None:
    """Run a sample mood board end to end on the embedded stack, then print a summary."""
    data_dir = out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # each demo starts from an empty database
    stack = EmbeddedStack(data_dir=data_dir, api_port=free_port())
    click.echo("starting the embedded stack (SQLite, filesystem broker, worker, fal + Runware sandboxes) ...")
    try:
        stack.start()
        stack.wait_ready()
        api = Api(stack.api_url, _create_key(stack))
        batch = api.json("POST", "/v1/batches", json=mood_board(prompts, seeds))
        click.echo(f"submitted batch {batch['id']}: {batch['total']} jobs on {', '.join(MODELS)}")
        click.echo(f"watch it live: {stack.api_url}/admin/batches/{batch['id']} (sign in with the admin key "
                   f"{api.key}; the dashboard stops with the demo)")
        final = follow(api, batch["id"], 0.25)
        manifest = fetch_manifest(api, batch["id"])
        jobs = _all_jobs(api, batch["id"])
        save_results(batch["id"], manifest, out, sheet_limit=200, thumb=192)
    finally:
        stack.stop()
    print_summary(final, jobs, manifest)
    if final["state"] != "succeeded":
        raise SystemExit(1)


def _all_jobs(api: Api, batch_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = api.json("GET", f"/v1/batches/{batch_id}/jobs?limit=500" + (f"&cursor={cursor}" if cursor else ""))
        jobs += page["data"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return jobs


def print_summary(batch: dict[str, Any], jobs: list[dict[str, Any]], manifest: list[dict[str, Any]]) -> None:
    """Per state, per provider (jobs, images, cost), and p50/p95 seconds per image."""
    click.echo(f"\nbatch {batch['id']}: {batch['state']}")
    print_table([("state", 12, "<"), ("jobs", 6, ">")], [(s, n) for s, n in batch["counts"].items() if n])
    images = {line["job_id"]: len(line["images"]) for line in manifest}
    rows = []
    for provider in sorted({j["provider"] for j in jobs}):
        mine = [j for j in jobs if j["provider"] == provider]
        took = sorted(_seconds(j) for j in mine if j["completed_at"])
        cost = sum(j["cost"] or 0 for j in mine)
        count = sum(images.get(j["id"], 0) for j in mine)
        # `reported` by the provider (Runware) or `priced` from the price table (fal reports none)
        source = "/".join(sorted({j.get("cost_source") or "-" for j in mine}))
        rows.append((provider, len(mine), count, f"{cost:.4f}", source, f"{_pct(took, 50):.2f}",
                     f"{_pct(took, 95):.2f}"))
    click.echo()
    print_table([("provider", 10, "<"), ("jobs", 6, ">"), ("images", 8, ">"), ("cost $", 10, ">"),
                 ("source", 10, ">"), ("p50 s", 8, ">"), ("p95 s", 8, ">")], rows)
    click.echo(f"total cost ${batch.get('cost') or 0:.4f} "
               f"(estimated before submit ${batch.get('estimated_cost') or 0:.4f})")


def _seconds(job: dict[str, Any]) -> float:
    return (datetime.fromisoformat(job["completed_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# Each `up` port: (parameter, option, environment variable, default). Chosen ports never move:
# an exported ORCH_API_URL must keep pointing at the API after a restart.
UP_PORTS = (("port", "--port", "ORCH_API_PORT", 8000), ("fal_port", "--fal-port", "ORCH_FAL_PORT", 8101),
            ("runware_port", "--runware-port", "ORCH_RUNWARE_PORT", 8102))


def check_ports(ports: dict[str, int]) -> None:
    """Fail with the port and the option to change when a chosen port is taken or given twice."""
    seen: dict[int, str] = {}
    for name, option, env, _ in UP_PORTS:
        port = ports[name]
        if port in seen:
            raise CliError(f"{seen[port]} and {option} are both {port}; give each its own port")
        seen[port] = option
        if not port_is_free(port):
            other = port + 10 if port_is_free(port + 10) else free_port()
            raise CliError(f"port {port} on 127.0.0.1 is already in use ({option} / {env}); stop what listens "
                           f"there or choose another port, e.g. orchestrator up {option} {other}")


def _port_option(name: str, option: str, env: str, default: int, what: str) -> Callable[..., Any]:
    return click.option(option, name, type=click.IntRange(1, 65535), envvar=env, default=default, show_default=True,
                        help=f"{what} port; fails if taken [env {env}]")


@click.command("up")
@_port_option(*UP_PORTS[0], "API")
@_port_option(*UP_PORTS[1], "fal sandbox")
@_port_option(*UP_PORTS[2], "Runware sandbox")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="defaults to ORCH_DATA_DIR (.orchestrator)")
def up(port: int, fal_port: int, runware_port: int, data_dir: Path | None) -> None:
    """Run the embedded stack until Ctrl-C: API, worker, scheduler and both sandboxes."""
    from orchestrator.settings import get_settings

    check_ports({"port": port, "fal_port": fal_port, "runware_port": runware_port})
    data_dir = data_dir or get_settings().data_dir
    stack = EmbeddedStack(data_dir=data_dir, api_port=port, fal_port=fal_port, runware_port=runware_port)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        try:
            stack.start()
        except (OSError, RuntimeError) as exc:  # a port taken between the check and the bind
            cause = exc.__cause__ or exc
            raise CliError(f"the embedded stack could not start: {cause}") from None
        stack.wait_ready()
        key = _stored_key(stack)
        print_urls(stack, data_dir, key)
        while not stopping.wait(0.5):
            if stack.worker is not None and stack.worker.poll() is not None:
                raise click.ClickException(f"the worker exited; see {data_dir / 'worker.log'}")
    finally:
        click.echo("stopping ...")
        stack.stop()
    click.echo("stopped")


def print_urls(stack: EmbeddedStack, data_dir: Path, key: str) -> None:
    """Every address `up` serves, and the two exports the client commands need."""
    assert stack.fal is not None and stack.runware is not None
    rows = [("API", stack.api_url), ("dashboard", f"{stack.api_url}/admin/ (sign in with ORCH_API_KEY: an admin key)"),
            ("OpenAPI", f"{stack.api_url}/v1/openapi.json"),
            ("health", f"{stack.api_url}/readyz"), ("metrics", f"{stack.api_url}/metrics"),
            ("fal sandbox", stack.fal.url), ("Runware sandbox", f"{stack.runware.url}/v1"),
            ("data", str(data_dir.resolve()))]
    for name, value in rows:
        click.echo(f"{name:<16}{value}")
    click.echo(f"\nexport ORCH_API_URL={stack.api_url}\nexport ORCH_API_KEY={key}")
    click.echo("\nready; Ctrl-C stops everything (your data stays in the data directory)")


def _stored_key(stack: EmbeddedStack) -> str:
    """A development key kept in the data directory, so it survives restarts."""
    path = stack.data_dir / "api_key"
    if path.exists():
        return path.read_text().strip()
    key = _create_key(stack, tenant="default")
    path.write_text(key)
    path.chmod(0o600)
    return key


def register(main: click.Group) -> None:
    """Attach demo and up."""
    main.add_command(demo)
    main.add_command(up)
