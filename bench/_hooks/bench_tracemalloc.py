"""Benchmark-only hook: where a process's Python memory grows (tracemalloc), under BENCH_TRACEMALLOC_DIR.

Imported by sitecustomize.py when that variable is set. A daemon thread starts tracing
BENCH_TRACEMALLOC_START seconds (default 15) after the process starts (tracing its imports too
would slow start-up past the benchmarks' readiness waits, and growth is what we are after), then
takes a snapshot every BENCH_TRACEMALLOC_SECONDS (default 5) and writes
BENCH_TRACEMALLOC_DIR/<pid>.txt: the traced total and peak, then the 25 allocation sites that
grew most since the first snapshot (with the innermost frames of their traceback). Tracing slows
a process down several times: use it to find a leak, never for the figures of a timed run.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc

FRAMES = 8
TOP = 25


def install(folder: str) -> None:
    """Start the thread that starts tracing and writes the snapshots."""
    delay = float(os.environ.get("BENCH_TRACEMALLOC_START", "15"))
    interval = float(os.environ.get("BENCH_TRACEMALLOC_SECONDS", "5"))

    def write() -> None:
        time.sleep(delay)
        tracemalloc.start(FRAMES)
        first = tracemalloc.take_snapshot()
        while True:
            time.sleep(interval)
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            current, peak = tracemalloc.get_traced_memory()
            lines = [f"pid {os.getpid()} traced {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB"]
            for stat in snap.compare_to(first, "traceback")[:TOP]:
                lines.append(f"\n{stat.size_diff / 2**20:+.2f} MiB ({stat.count_diff:+d} blocks), now "
                             f"{stat.size / 2**20:.2f} MiB")
                lines.extend("    " + line for line in stat.traceback.format(limit=6))
            path = os.path.join(folder, f"{os.getpid()}.txt")
            with open(path + ".tmp", "w") as out:
                out.write("\n".join(lines) + "\n")
            os.replace(path + ".tmp", path)

    threading.Thread(target=write, name="bench-tracemalloc", daemon=True).start()
