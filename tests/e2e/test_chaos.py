"""The short chaos run: bench/chaos.py with small parameters, as an operator would see the system.

It starts its own Postgres and Redis (never the test ones), both sandboxes, the API, three workers
and beat as processes, injects every sandbox and process fault, and audits from the outside.
Run alone with `pytest -m chaos`; `.ci/run` runs it as its own step.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")]


def test_short_chaos_run_loses_nothing_and_pays_nothing_twice(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import chaos
    finally:
        sys.path.remove(str(BENCH))
    result = chaos.run_once(chaos.Params(jobs=60, batch_size=15, seed=11, timeout=170, window=15))
    chaos.print_results([result])
    table = capsys.readouterr().out
    # Every fault really happened, and nothing was lost, paid twice, duplicated or mismatched.
    assert result.failures == [], table
    assert result.audit.jobs == 60 and result.audit.objects_checked > 0, table
    assert result.audit.failed_by_code.get("result_expired", 0) >= 2, table  # expired media fail cleanly
