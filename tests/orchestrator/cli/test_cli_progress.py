"""The CLI's display layer without a server: rich on a terminal, plain text when piped."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.cli import progress

BATCH = {"id": "b" * 36, "state": "running", "total": 10, "cost": 0.5, "created_at": "2026-12-01T08:00:00.000000+00:00",
         "name": "board", "counts": {"queued": 3, "submitted": 2, "succeeded": 4, "failed": 1}}


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, color_system="standard", width=160), buf


def test_summary_tables_are_coloured_on_a_terminal_and_aligned_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    out, buf = _terminal()
    progress.print_table([("state", 12, "<"), ("jobs", 6, ">")], [("succeeded", 4), ("failed", 1)], out)
    assert "\x1b[32msucceeded" in buf.getvalue() and "\x1b[31mfailed" in buf.getvalue()
    progress.print_table([("state", 12, "<"), ("jobs", 6, ">")], [("succeeded", 4)], Console(file=io.StringIO()))
    assert capsys.readouterr().out.splitlines() == ["state         jobs", "succeeded        4"]


def test_batch_table_and_progress_line() -> None:
    out, buf = _terminal()
    progress.show_batches([BATCH], out)
    assert "\x1b[36mrunning" in buf.getvalue() and "5/10" in buf.getvalue()
    lines = progress.plain_table([BATCH])
    assert lines[0].split() == ["ID", "STATE", "DONE", "FAILED", "COST", "CREATED", "NAME"]
    assert lines[1].split() == ["b" * 36, "running", "5/10", "1", "0.5000", BATCH["created_at"], "board"]
    bar = f"[{'#' * 15}{'-' * 15}]"
    assert progress.progress_line(BATCH) == f"{bar} 5/10  50%  succeeded 4, failed 1, running 2, queued 3"
    assert progress.coloured_states(BATCH).markup.startswith("[green]succeeded 4[/green]")
