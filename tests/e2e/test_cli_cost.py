"""Cost in the CLI: `submit --estimate`, the estimate before large batches, caps, summaries, tenants budget."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main
from orchestrator.models import Batch
from tests.conftest import REDIS_URL, make_key
from tests.stack import Stack, start_stack

pytestmark = [pytest.mark.slow, pytest.mark.committed]  # a stack or an API process reads the data


@pytest.fixture(scope="module")
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(pg_url, REDIS_URL, tmp_path_factory.mktemp("clicost"))
    s.start_worker("w1")
    yield s
    s.stop()


def cli(stack: Stack, key: str, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env={"ORCH_API_URL": stack.api_url, "ORCH_API_KEY": key,
                                                       **(env or {})})
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}\n{stack.logs()}"
    assert "Traceback" not in result.output and key not in result.output
    return result


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a lighthouse\na koi pond\n")
    return path


def batches(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Batch)) or 0


def test_estimate_prints_the_table_and_submits_nothing(stack: Stack, sessions: sessionmaker[Session],
                                                       session: Session, prompts: Path) -> None:
    key = make_key(sessions, "acme")
    out = cli(stack, key, "submit", str(prompts), "--model", "flux-dev", "--seeds", "1,2,3", "--sizes",
              "square_hd,1536x1024", "--estimate").output
    # 2 prompts x 3 seeds x 2 sizes on fal dev: 6 x 1 MP + 6 x 2 MP (1.5 MP rounded up) at $0.025
    assert re.search(r"fal\s+fal-ai/flux/dev\s+12\s+12\s+18\s+0\.4500", out), out
    assert re.search(r"total\s+12\s+12\s+18\s+0\.4500", out), out
    assert "range if aliases fail over" in out  # flux-dev may move to Runware
    assert batches(session) == 0
    over = cli(stack, key, "submit", str(prompts), "--model", "flux-dev", "--max-cost", "0.04", "--estimate", code=2)
    assert "max_cost_usd" in over.output and batches(session) == 0


def test_large_batches_show_the_estimate_first_and_summaries_show_cost(
        stack: Stack, sessions: sessionmaker[Session], prompts: Path) -> None:
    key = make_key(sessions, "acme")
    small = cli(stack, key, "submit", str(prompts), "--model", "fal-ai/flux/schnell", "--sizes", "square_hd",
                "--watch").output
    assert "the estimate first" not in small
    assert re.search(r"cost 0\.0060 USD \(estimated 0\.0060\)", small), small
    big = cli(stack, key, "submit", str(prompts), "--model", "fal-ai/flux/schnell", "--seeds", "1,2",
              "--sizes", "square_hd", "--confirm-above", "3", "--max-cost", "0.012", "--watch").output
    assert "4 jobs (more than 3): the estimate first" in big and "batch cap 0.0120" in big
    batch_id = re.search(r"batch ([0-9a-f-]{36}) submitted", big)[1]  # type: ignore[index]
    status = cli(stack, key, "status", batch_id).output
    assert "0.0120 USD (estimated 0.0120, cap 0.0120)" in status
    results = cli(stack, key, "results", batch_id).output
    assert "cost 0.0120 USD (priced 0.0120)" in results


def test_tenants_budget_command(stack: Stack, sessions: sessionmaker[Session], prompts: Path) -> None:
    env = {k: v for k, v in stack.env.items() if k.startswith("ORCH_")}
    key = make_key(sessions, "globex")
    shown = cli(stack, key, "tenants", "budget", "globex", "--daily", "0.5", "--timezone", "Asia/Tokyo",
                env=env).output
    assert re.search(r"daily_usd:\s+0\.5", shown) and re.search(r"timezone:\s+Asia/Tokyo", shown)
    cleared = cli(stack, key, "tenants", "budget", "globex", "--daily", "none", env=env).output
    assert re.search(r"daily_usd:\s+-", cleared)
    bad = cli(stack, key, "tenants", "budget", "globex", "--monthly", "-3", env=env, code=1)
    assert "monthly_usd must be between 0 and" in bad.output
    tz = cli(stack, key, "tenants", "budget", "globex", "--timezone", "Nowhere/Land", env=env, code=1)
    assert "unknown timezone 'Nowhere/Land'" in tz.output
    cli(stack, key, "tenants", "budget", "globex", "--daily", "0.001", env=env)
    refused = cli(stack, key, "submit", str(prompts), "--model", "fal-ai/flux/schnell", "--sizes", "square_hd",
                  code=2)
    assert "daily cap" in refused.output
