"""A new batch's rows through COPY (Postgres) read back exactly as through INSERTs, and all or nothing."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import batches, bulk, intake
from orchestrator.db import make_engine, make_session_factory, session_scope
from orchestrator.migrate import upgrade
from orchestrator.models import Asset, Batch, Job
from tests.stack import wait_for

SEED_MAX = 2**64 - 1
ODD_TEXT = 'café ☕ 日本語 🦊 "quoted" tab\there\nnew line\r back\\slash \\N \\.'
ITEMS: list[dict[str, Any]] = [
    {"custom_id": "plain", "model": "flux-schnell", "prompt": "a fox"},
    {"custom_id": "ünï-☃-日本\t\\N", "model": "fal-ai/flux/dev", "prompt": ODD_TEXT,
     "seed": SEED_MAX, "num_images": 4, "image_size": "landscape_16_9", "native": {"enable_safety_checker": False}},
    {"custom_id": "runware", "model": "runware:101@1", "prompt": "\\N", "negative_prompt": "\\N",
     "width": 1024, "height": 768, "steps": 30, "guidance": 7.5, "seed": 1,
     "native": {"outputQuality": 90, "scheduler": "Euler a"}},
    {"custom_id": "lora", "model": "fal-ai/flux-lora", "prompt": "with a lora",
     "loras": [{"path": "https://example.com/l.safetensors", "scale": 1.25}], "native": {"acceleration": "regular"}},
    {"custom_id": "jugg", "model": "juggernaut-flux", "prompt": "x" * 5000, "output_format": "png", "seed": 0},
    {"model": "runware:100@1", "prompt": "no custom id", "num_images": 20},
    *({"custom_id": f"bulk-{i}", "model": "flux-dev", "prompt": f"row {i}", "seed": i} for i in range(6)),
]
BODY = {"name": "mixed ✓", "lane": "bulk", "callback_url": "https://example.com/done", "max_cost_usd": 50,
        "metadata": {"owner": "zoë", "nested": {"list": [1, None, "два"]}, "none": None}, "items": ITEMS}
# The catalog identity of two jobs (the others get a JSON null, as job_rows writes them), and the
# stored images reused by one (written already succeeded, with asset rows).
REFS = {0: {"catalog": "c", "row": "plain", "content_key": "k0", "keys": ["c/plain/0.jpeg"]},
        3: {"catalog": "c", "row": "lora", "content_key": "k3", "keys": []}}
REUSED = {1: [{"index": i, "storage_key": f"c/ünï/{i}.jpeg", "content_type": "image/jpeg", "width": 1344,
               "height": 768, "bytes": 1000 + i, "sha256": "ab" * 32, "seed": str(SEED_MAX)} for i in range(4)]}
# Columns whose values must differ between two batches (keys), and the times, compared as offsets
# from their batch's creation.
KEYS = {"id", "batch_id", "job_id", "idempotency_key"}
TIMES = {"created_at", "updated_at", "next_attempt_at", "completed_at", "started_at", "stored_at"}
COMMIT_TIMES = {"started_at"}  # taken by the counter update at commit: only whether it is set compares


def write_batch(session: Session, key: str, *, inserts_only: bool = False) -> Batch:
    """The mixed batch through insert_batch (COPY on Postgres unless `inserts_only`), committed."""
    session.info[bulk.INSERTS_ONLY] = inserts_only
    plan = intake.plan(intake.parse_json(json.dumps(BODY).encode(), 100), 100)
    extras = batches.Extras(catalog_refs=REFS, reused=REUSED, summary={"read": len(ITEMS), "unchanged": 1})
    batch = batches.insert_batch(session, "acme", plan, idempotency_key=key, request_hash="h", extras=extras)
    session.commit()
    return batch


def _relative(name: str, value: Any, origin: datetime) -> Any:
    if name in TIMES and value is not None:
        assert value.tzinfo is UTC, f"{name} is not an aware UTC time: {value!r}"
        return "set" if name in COMMIT_TIMES else value - origin
    return type(value).__name__, value  # the type too: an enum member, not a plain string


def _values(obj: Any, origin: datetime) -> dict[str, Any]:
    return {a.key: _relative(a.key, getattr(obj, a.key), origin) for a in sa.inspect(type(obj)).column_attrs
            if a.key not in KEYS}


def read_back(session: Session, batch_id: Any) -> dict[str, Any]:
    """Every column of the batch, its jobs (by position) and their assets, as the ORM reads them."""
    session.expire_all()
    batch = session.get(Batch, batch_id)
    assert batch is not None
    jobs = session.scalars(sa.select(Job).where(Job.batch_id == batch_id).order_by(Job.position)).all()
    assets = session.execute(sa.select(Job.position, Asset).join(Asset, Asset.job_id == Job.id)
                             .where(Job.batch_id == batch_id).order_by(Job.position, Asset.index)).all()
    return {"batch": _values(batch, batch.created_at),
            "jobs": [_values(job, batch.created_at) for job in jobs],
            "assets": [(position, _values(asset, batch.created_at)) for position, asset in assets]}


def stored_text(session: Session, batch_id: Any) -> list[str]:
    """Each job row as Postgres prints it (JSON null and SQL NULL differ here), keys and times left out."""
    columns = [c.name for c in Job.__table__.columns if c.name not in KEYS | TIMES]
    sql = (f"SELECT ROW({', '.join(columns)})::text FROM jobs WHERE batch_id = :b ORDER BY position")
    return list(session.execute(sa.text(sql), {"b": batch_id}).scalars())


def test_copy_and_inserts_write_the_same_rows(session: Session) -> None:
    copied = write_batch(session, "copy")
    inserted = write_batch(session, "insert", inserts_only=True)
    assert stored_text(session, copied.id) == stored_text(session, inserted.id)
    got, want = read_back(session, copied.id), read_back(session, inserted.id)
    assert len(got["jobs"]) == len(ITEMS) and len(got["assets"]) == 4
    for name in ("batch", "jobs", "assets"):
        assert got[name] == want[name], name
    # Spot checks of what the comparison covers, so an empty read-back cannot pass.
    jobs = got["jobs"]
    assert jobs[1]["params"][1]["prompt"] == ODD_TEXT and jobs[1]["params"][1]["seed"] == SEED_MAX
    assert jobs[1]["custom_id"] == ("str", "ünï-☃-日本\t\\N") and jobs[5]["custom_id"] == ("str", "item-5")
    assert jobs[0]["catalog_ref"][1] == REFS[0] and jobs[2]["catalog_ref"] == ("NoneType", None)
    assert jobs[1]["state"][0] == "JobState" and jobs[1]["completed_at"] is not None
    assert jobs[0]["provider_meta"] == ("dict", {}) and jobs[0]["lane"] == ("str", "bulk")
    assert got["batch"]["count_succeeded"] == ("int", 1) and got["batch"]["total"] == ("int", len(ITEMS))


def test_the_embedded_default_reads_back_the_same(session: Session, tmp_path: Path) -> None:
    """SQLite (`orchestrator demo`) keeps the insert path; its rows read back as Postgres's COPY rows."""
    copied = read_back(session, write_batch(session, "copy").id)
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as lite:
            embedded = read_back(lite, write_batch(lite, "sqlite").id)
    finally:
        engine.dispose()
    for name in ("batch", "jobs", "assets"):
        assert embedded[name] == copied[name], name


def _counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # type: ignore[return-value]
                     for t in ("batches", "jobs", "assets"))


@pytest.mark.committed
def test_a_row_failing_mid_copy_leaves_nothing(sessions: sessionmaker[Session], engine: Engine) -> None:
    plan = intake.plan(intake.parse_json(json.dumps(BODY).encode(), 100), 100)
    jobs = list(plan.jobs)
    jobs[8] = dataclasses.replace(jobs[8], custom_id=jobs[7].custom_id)  # breaks unique (batch_id, custom_id)
    with pytest.raises(sa.exc.IntegrityError, match="custom_id"), session_scope(sessions) as s:
        batches.insert_batch(s, "acme", dataclasses.replace(plan, jobs=jobs), idempotency_key=None,
                             request_hash=None)
    assert _counts(engine) == (0, 0, 0)


@pytest.mark.committed
def test_an_error_after_copy_leaves_nothing(sessions: sessionmaker[Session], engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="after COPY"), session_scope(sessions) as s:
        plan = intake.plan(intake.parse_json(json.dumps(BODY).encode(), 100), 100)
        extras = batches.Extras(reused=REUSED)
        made = batches.insert_batch(s, "acme", plan, idempotency_key="k", request_hash="h", extras=extras)
        s.flush()
        seen = s.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.batch_id == made.id))
        assert seen == len(ITEMS)  # the copied rows are in this transaction...
        raise RuntimeError("failed after COPY")
    assert _counts(engine) == (0, 0, 0)  # ...and went with its rollback


@pytest.mark.committed
def test_two_requests_with_one_idempotency_key_at_once_make_one_batch(
        sessions: sessionmaker[Session], engine: Engine) -> None:
    """The second waits for the first to commit and replays its batch (it used to fail on the
    unique key: a 500)."""
    plan = intake.plan(intake.parse_json(json.dumps(BODY).encode(), 100), 100)
    first = sessions()
    made, created = batches.create_batch(first, "acme", plan, idempotency_key="same", request_hash="h")
    assert created
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            with session_scope(sessions) as s:
                batch, again = batches.create_batch(s, "acme", plan, idempotency_key="same", request_hash="h")
                outcome["result"] = (batch.id, again)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    def blocked() -> int:  # a fresh connection each time: activity statistics are per transaction
        with engine.connect() as probe:
            return probe.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND datname = current_database()")) or 0

    wait_for(blocked, 30, "the second request waiting behind the first")
    first.commit()
    first.close()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"] == (made.id, False)
    assert _counts(engine)[0] == 1
