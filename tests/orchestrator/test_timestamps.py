"""Every time the API answers is RFC 3339 in UTC with its offset, on Postgres and on the embedded SQLite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from orchestrator import auth
from orchestrator.db import as_utc, iso, make_engine, make_session_factory, session_scope
from orchestrator.models import Batch
from orchestrator.settings import Settings
from tests.conftest import REDIS_URL

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
SCHEDULE = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
            "template": {"items": [{"model": "flux-schnell", "prompt": "a mug"}]}}


def times(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, value) whose key names a time (`*_at`, `at`), anywhere in a JSON document."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if (key.endswith("_at") or key == "at") and inner is not None:
                yield f"{path}.{key}", inner
            yield from times(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from times(inner, f"{path}[{i}]")


@pytest.fixture(params=["postgres", "sqlite"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FlaskClient, dict[str, str]]]:
    """An app and an authorised client on Postgres (the test database) or on a migrated SQLite file."""
    from orchestrator.api import create_app
    from orchestrator.migrate import upgrade

    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        request.getfixturevalue("sessions")  # empties the tables afterwards
    else:
        url = f"sqlite:///{tmp_path / 'embedded.db'}"
        upgrade(url)
    settings = Settings(database_url=url, broker_url=REDIS_URL, data_dir=tmp_path / "data",
                        storage_url=(tmp_path / "storage").as_uri(), secret_key="test-secret-key-0123456789")
    app = create_app(settings)
    svc = app.extensions["orchestrator"]
    with session_scope(svc.sessions) as s:
        _, token = auth.create_key(s, "acme")
    yield url, app.test_client(), {"Authorization": f"Bearer {token}"}
    svc.publisher.close()
    svc.engine.dispose()


@pytest.mark.committed
def test_every_answer_carries_utc_offsets(any_db: tuple[str, FlaskClient, dict[str, str]]) -> None:
    _, client, headers = any_db
    created = client.post("/v1/batches", json={"items": [{"model": "flux-schnell", "prompt": "a fox"}]},
                          headers=headers)
    assert created.status_code == 201, created.json
    bid = created.json["id"]
    cancelled = client.post(f"/v1/batches/{bid}/cancel", headers=headers).json  # gives the job a timeline event
    job_id = client.get(f"/v1/batches/{bid}/jobs", headers=headers).json["data"][0]["id"]
    schedule = client.post("/v1/schedules", json=SCHEDULE, headers=headers)
    assert schedule.status_code == 201, schedule.json
    answers = [created.json, cancelled, client.get(f"/v1/batches/{bid}", headers=headers).json,
               client.get("/v1/batches", headers=headers).json, client.get(f"/v1/jobs/{job_id}", headers=headers).json,
               schedule.json, client.get(f"/v1/schedules/{schedule.json['id']}", headers=headers).json,
               client.get("/v1/schedules", headers=headers).json]
    found = [(p, v) for answer in answers for p, v in times(answer)]
    assert {p.rsplit(".", 1)[-1] for p, _ in found} >= {"created_at", "completed_at", "at", "next_run_at"}
    assert [(p, v) for p, v in found if not RFC3339_UTC.match(v)] == []
    # The same instant reads the same after a POST and after a GET (it used to lose its zone on the way back).
    assert schedule.json["next_run_at"] == answers[6]["next_run_at"]
    assert created.json["created_at"] == answers[2]["created_at"]


@pytest.mark.committed
def test_the_database_keeps_the_zone(any_db: tuple[str, FlaskClient, dict[str, str]]) -> None:
    url, client, headers = any_db
    client.post("/v1/batches", json={"items": [{"model": "flux-schnell", "prompt": "a fox"}]}, headers=headers)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                raw = conn.exec_driver_sql("SELECT created_at FROM batches").scalar()
                assert str(raw).endswith("+00:00")  # the text in the file says it is UTC
            else:
                kinds = set(conn.execute(sa.text(
                    "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND column_name ~ '_(at|until)$'")).scalars())
                assert kinds == {"timestamp with time zone"}
        with make_session_factory(engine)() as s:
            batch = s.scalars(sa.select(Batch)).one()
            assert batch.created_at.utcoffset() is not None and batch.created_at.tzinfo == UTC
    finally:
        engine.dispose()


def test_one_format_for_any_input() -> None:
    berlin = datetime.fromisoformat("2026-12-01T09:30:00+01:00")
    assert iso(berlin) == "2026-12-01T08:30:00.000000+00:00"
    assert iso(datetime(2026, 12, 1, 8, 30)) == "2026-12-01T08:30:00.000000+00:00"  # naive means UTC here
    assert as_utc(berlin) == berlin and iso(None) is None
