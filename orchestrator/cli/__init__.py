"""The `orchestrator` command."""

from __future__ import annotations

import sys

import click

from orchestrator.cli import admin, run


@click.group()
def main() -> None:
    """Batch image generation on fal and Runware, with webhooks and presigned storage."""


admin.register(main)
run.register(main)

try:  # the sandbox commands ship with the package; guarded only while they are being built
    from orchestrator.cli.sandbox import sandbox

    main.add_command(sandbox)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
