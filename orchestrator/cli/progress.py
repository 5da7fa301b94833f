"""How the CLI shows progress and tables: `rich` on a terminal, plain lines everywhere else.

On a terminal: a progress bar with jobs per second, time remaining and a count per state in
its colour, and live-updating tables. When stdout is a pipe or a file (CI logs, `| tee`), the
plain, stable lines scripts already parse: a changed progress line at most every few seconds,
a heartbeat when nothing moves, and a fixed-width table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from orchestrator.models import FINAL_BATCH

JOB_STATES = ("queued", "submitting", "submitted", "storing", "succeeded", "failed", "cancelled")
DONE_JOB_STATES = ("succeeded", "failed", "cancelled")
RUNNING_STATES = ("submitting", "submitted", "storing")
BAR_WIDTH = 30
LOG_GAP_SECONDS = 2.0  # without a TTY, print a changed progress line at most this often
QUIET_SECONDS = 15.0  # ... and repeat an unchanged one this often
COLOURS = {"succeeded": "green", "partially_failed": "yellow", "failed": "red", "cancelled": "magenta",
           "running": "cyan", "queued": "bright_black", "submitting": "cyan", "submitted": "cyan", "storing": "cyan"}

Poll = Callable[[], dict[str, Any]]


def console() -> Console:
    """A console on the current stdout (click's test runner swaps it)."""
    return Console(file=sys.stdout)


def done_count(batch: dict[str, Any]) -> int:
    """Jobs in a final state."""
    counts: dict[str, int] = batch.get("counts") or {}
    return sum(counts.get(s, 0) for s in DONE_JOB_STATES)


def state_parts(batch: dict[str, Any]) -> list[tuple[str, int]]:
    """(name, count) for succeeded, failed, cancelled, running and queued; zero counts left out."""
    counts: dict[str, int] = batch.get("counts") or {}
    parts = [(s, counts.get(s, 0)) for s in DONE_JOB_STATES]
    parts += [("running", sum(counts.get(s, 0) for s in RUNNING_STATES)), ("queued", counts.get("queued", 0))]
    return [(name, n) for name, n in parts if n]


def progress_line(batch: dict[str, Any]) -> str:
    """`[#####-----] 12/40  30%  succeeded 10, failed 2, running 5, queued 23`."""
    total = int(batch.get("total") or 0)
    done = done_count(batch)
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    detail = ", ".join(f"{name} {n}" for name, n in state_parts(batch))
    percent = 100 * done // total if total else 100
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} {percent:3d}%  {detail}"


def coloured_states(batch: dict[str, Any]) -> Text:
    """The per-state counts, each in its state's colour."""
    text = Text()
    for i, (name, n) in enumerate(state_parts(batch)):
        text.append(", " if i else "")
        text.append(f"{name} {n}", style=COLOURS.get(name, ""))
    return text


def log_worthy(line: str, last: str, last_at: float | None, final: bool) -> bool:
    """Whether to print this progress line when stdout is not a terminal."""
    # First and final lines always; changes at most every few seconds; a heartbeat when nothing
    # moves: piped output (CI logs) stays short yet shows the watch is alive.
    if last_at is None or (final and line != last):
        return True
    quiet = time.monotonic() - last_at
    return (line != last and quiet >= LOG_GAP_SECONDS) or quiet >= QUIET_SECONDS


def watch_batch(poll: Poll, interval: float, out: Console | None = None) -> dict[str, Any]:
    """Poll until the batch is final, drawing progress; returns the final batch."""
    out = out or console()
    return _rich_progress(poll, interval, out) if out.is_terminal else _plain_progress(poll, interval)


def _plain_progress(poll: Poll, interval: float) -> dict[str, Any]:
    last, last_at = "", None
    while True:
        batch = poll()
        line, final = progress_line(batch), batch.get("state") in FINAL_BATCH
        if log_worthy(line, last, last_at, final):
            click.echo(line)
            last, last_at = line, time.monotonic()
        if final:
            return batch
        time.sleep(interval)


def _rich_progress(poll: Poll, interval: float, out: Console) -> dict[str, Any]:
    columns = (BarColumn(bar_width=BAR_WIDTH), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[states]}"))
    with Progress(*columns, console=out, transient=False, refresh_per_second=8) as bar:
        task = None
        started, first_done = time.monotonic(), None
        while True:
            batch = poll()
            done, total = done_count(batch), int(batch.get("total") or 0)
            first_done = done if first_done is None else first_done
            elapsed = time.monotonic() - started
            rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
            shown, states = f"{rate:.1f} jobs/s", coloured_states(batch).markup  # TextColumn renders markup
            if task is None:
                task = bar.add_task("batch", total=total or 1, completed=done, rate=shown, states=states)
            else:
                bar.update(task, total=total or 1, completed=done, rate=shown, states=states)
            if batch.get("state") in FINAL_BATCH:
                bar.refresh()
                return batch
            time.sleep(interval)


def batches_table(batches: list[dict[str, Any]]) -> Table:
    """Recent batches as a rich table, states in colour."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("ID", "left"), ("STATE", "left"), ("DONE", "right"), ("FAILED", "right"),
                          ("COST", "right"), ("CREATED", "left"), ("NAME", "left")):
        table.add_column(name, justify=justify, no_wrap=name in ("ID", "CREATED"))  # type: ignore[arg-type]
    for b in batches:
        counts = b.get("counts") or {}
        state = str(b.get("state", ""))
        table.add_row(str(b.get("id", "")), Text(state, style=COLOURS.get(state, "")),
                      f"{done_count(b)}/{b.get('total', 0)}", str(counts.get("failed", 0)),
                      f"{b.get('cost') or 0:.4f}", str(b.get("created_at") or ""), str(b.get("name") or ""))
    return table


def plain_table(batches: list[dict[str, Any]]) -> list[str]:
    """The same table as fixed-width text lines."""
    lines = [f"{'ID':<36}  {'STATE':<16}  {'DONE':>11}  {'FAILED':>6}  {'COST':>9}  {'CREATED':<32}  NAME"]
    for b in batches:
        counts = b.get("counts") or {}
        progress = f"{done_count(b)}/{b.get('total', 0)}"
        lines.append(f"{b.get('id', ''):<36}  {b.get('state', ''):<16}  {progress:>11}  "
                     f"{counts.get('failed', 0):>6}  {b.get('cost') or 0:>9.4f}  "
                     f"{b.get('created_at') or '':<32}  {b.get('name') or ''}")
    return lines


def show_batches(batches: list[dict[str, Any]], out: Console | None = None) -> None:
    """Print the table once: rich on a terminal, fixed-width text otherwise."""
    out = out or console()
    if not batches:
        click.echo("no batches yet")
    elif out.is_terminal:
        out.print(batches_table(batches))
    else:
        for line in plain_table(batches):
            click.echo(line)


def watch_batches(poll: Callable[[], list[dict[str, Any]]], interval: float, out: Console | None = None) -> None:
    """Keep the table current until every listed batch is final (Ctrl-C stops watching earlier)."""
    out = out or console()
    if out.is_terminal:
        with Live(console=out, refresh_per_second=4, transient=False) as live:
            while True:
                rows = poll()
                stamp = Text(f"refreshed every {interval:g}s; Ctrl-C stops watching", style="bright_black")
                live.update(Group(batches_table(rows), stamp) if rows else Text("no batches yet"))
                if all(b.get("state") in FINAL_BATCH for b in rows):
                    return
                time.sleep(interval)
    last: list[str] = []
    while True:
        rows = poll()
        lines = plain_table(rows) if rows else ["no batches yet"]
        if lines != last:  # piped: print the table again only when it changed
            for line in lines:
                click.echo(line)
            last = lines
        if all(b.get("state") in FINAL_BATCH for b in rows):
            return
        time.sleep(interval)


Column = tuple[str, int, str]  # (header, width, "<" left or ">" right)


def print_table(columns: list[Column], rows: list[tuple[Any, ...]], out: Console | None = None) -> None:
    """Any small table (the demo's summary): rich on a terminal, fixed-width columns otherwise."""
    out = out or console()
    if out.is_terminal:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name, _, align in columns:
            table.add_column(name, justify="right" if align == ">" else "left")
        for row in rows:
            table.add_row(*(Text(str(v), style=COLOURS.get(str(v), "")) for v in row))
        out.print(table)
        return
    click.echo("".join(f"{name:{align}{width}}" for name, width, align in columns))
    for row in rows:
        click.echo("".join(f"{v!s:{align}{width}}" for v, (_, width, align) in zip(row, columns, strict=True)))
