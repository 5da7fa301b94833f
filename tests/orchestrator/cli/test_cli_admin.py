"""Operator commands against the test database: keys create, list and revoke."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main


@pytest.mark.committed
def test_keys_list_shows_prefixes_never_secrets(pg_url: str, sessions: sessionmaker[Session]) -> None:
    env = {"ORCH_DATABASE_URL": pg_url}
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--tenant", "acme", "--name", "ci"], env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    other = runner.invoke(main, ["keys", "create", "--tenant", "globex", "--role", "admin"], env=env)
    assert other.exit_code == 0, other.output
    prefix = token.removeprefix("orch_").split("_")[0]

    listed = runner.invoke(main, ["keys", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[1], r[2]) for r in rows] == [("acme", "client"), ("globex", "admin")]
    assert rows[0][0] == prefix and rows[0][-1] == "ci" and rows[0][3].endswith("+00:00")
    assert token.removeprefix(f"orch_{prefix}_") not in listed.output  # the secret part

    only = runner.invoke(main, ["keys", "list", "--tenant", "globex"], env=env).stdout
    assert "acme" not in only and "globex" in only
    assert runner.invoke(main, ["keys", "revoke", prefix], env=env).exit_code == 0
    assert prefix not in runner.invoke(main, ["keys", "list"], env=env).stdout
    assert f"{prefix}" in runner.invoke(main, ["keys", "list", "--all"], env=env).stdout
    assert "(revoked)" in runner.invoke(main, ["keys", "list", "--all"], env=env).stdout
