"""The `orchestrator` command."""

from __future__ import annotations

import sys

import click

from orchestrator.cli import admin, cancel_retry, demo, moodboard, prices, results, run, status, submit
from orchestrator.cli.sandbox import sandbox
from orchestrator.cli.schedules import schedules


@click.group()
def main() -> None:
    """Batch image generation on fal and Runware, with webhooks and presigned storage."""


demo.register(main)
admin.register(main)
run.register(main)
for command in (submit.submit, status.status, results.results, cancel_retry.cancel, cancel_retry.retry):
    main.add_command(command)
moodboard.register(main)
prices.register(main)
main.add_command(sandbox)
main.add_command(schedules)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
