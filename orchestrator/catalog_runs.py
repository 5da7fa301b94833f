"""Catalog batches that pay only for what changed.

Every row of a catalog batch gets a content key (orchestrator.catalog_keys). With
`only_changed`, a row whose content key already has verified, stored images in this tenant's
catalog (and whose objects still exist) is not sent to a provider: its job is written already
succeeded, pointing at the existing images. Rows that are new or whose key changed are
generated; rows that disappeared since the last run are reported `removed` (and their images
deleted only with `prune`).

The index (`catalog_entries`) moves to a row's new images only when the store step has
verified all of them (workers/store.py), so a failed night leaves the previous images.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import batches, catalog_keys, metrics
from orchestrator.db import upsert_insert, utcnow
from orchestrator.errors import BatchRejected, ItemProblem
from orchestrator.intake import Plan
from orchestrator.models import Asset, Batch
from orchestrator.pricing import Price
from orchestrator.schedule_models import CatalogEntry
from orchestrator.storage.base import Storage
from orchestrator.storage.local import LocalStorage

OUTCOMES = ("read", "new", "changed", "unchanged", "removed")
Exists = Callable[[Sequence[str]], set[str]]


@dataclass(frozen=True)
class RowRef:
    """One planned catalog row: its id, content key and stable keys (empty without a pattern)."""

    position: int
    row_id: str
    content_key: str
    keys: list[str]


@dataclass
class Diff:
    """What a run will do with each row."""

    reused: dict[int, list[dict[str, Any]]]
    outcome: dict[int, str]  # position -> new | changed | unchanged
    removed: list[str]
    prunable: list[str]  # object keys of removed rows that no remaining row uses

    def counts(self, read: int) -> dict[str, int]:
        """read / new / changed / unchanged / removed."""
        values = list(self.outcome.values())
        return {"read": read, "new": values.count("new"), "changed": values.count("changed"),
                "unchanged": values.count("unchanged"), "removed": len(self.removed)}


def catalog_name(plan: Plan, default: str | None) -> str | None:
    """The catalog's identity: its `name`, or the caller's default (a schedule's id)."""
    c = plan.request.catalog
    return (c.name if c is not None and c.name else None) or default


def row_refs(plan: Plan, tenant: str, name: str) -> list[RowRef]:
    """Content keys and stable keys for every job; BatchRejected naming bad rows."""
    c = plan.request.catalog
    assert c is not None and c.rows is not None
    keys: list[list[str]] = [[] for _ in plan.jobs]
    if c.key_pattern:
        columns = sorted({k for row in c.rows for k in row})
        first = plan.jobs[0]
        try:
            catalog_keys.check_pattern(c.key_pattern, columns, first.num_images)
        except catalog_keys.KeyPatternError as exc:
            raise BatchRejected([ItemProblem(None, None, "catalog.key_pattern", str(exc))]) from None
        keys, problems = catalog_keys.row_keys(tenant, c.key_pattern, c.rows, first.num_images,
                                               first.params["output_format"])
        if problems:
            raise BatchRejected([ItemProblem(p, plan.jobs[p].custom_id, "catalog.key_pattern", m)
                                 for p, m in problems])
    return [RowRef(j.position, j.custom_id, catalog_keys.content_key(j.requested_model, j.params), keys[j.position])
            for j in plan.jobs]


def storage_exists(storage: Storage, threads: int = 16) -> Exists:
    """Which of some keys exist. A local directory answers from the file system at once;
    elsewhere (S3) each check is a network HEAD, so they run in parallel."""
    def check(keys: Sequence[str]) -> set[str]:
        if isinstance(storage, LocalStorage) or len(keys) < 64:
            return {k for k in keys if storage.exists(k)}
        with ThreadPoolExecutor(threads) as pool:
            return {k for k, ok in zip(keys, pool.map(storage.exists, keys), strict=True) if ok}
    return check


@dataclass(frozen=True)
class Entry:
    """One row of the index, as the diff reads it (plain tuples: 20,000 of them load fast)."""

    row_id: str
    content_key: str
    images: list[dict[str, Any]]
    removed_at: datetime | None


def diff(session: Session, tenant: str, name: str, refs: Sequence[RowRef], exists: Exists,
         now: datetime) -> Diff:
    """Classify every row against the catalog's index, and mark disappeared rows removed."""
    entries = {row.row_id: Entry(*row) for row in session.execute(
        sa.select(CatalogEntry.row_id, CatalogEntry.content_key, CatalogEntry.images, CatalogEntry.removed_at)
        .where(CatalogEntry.tenant == tenant, CatalogEntry.catalog == name))}
    by_content: dict[str, list[Entry]] = {}
    for entry in entries.values():
        if entry.images:
            by_content.setdefault(entry.content_key, []).append(entry)
    # First pass: the candidate images of each row, without I/O.
    candidates: dict[int, Entry] = {}
    for ref in refs:
        own = entries.get(ref.row_id)
        pool = ([own] if own is not None else []) + by_content.get(ref.content_key, [])
        for entry in pool:
            if entry.content_key == ref.content_key and entry.images and _keys_match(entry, ref):
                candidates[ref.position] = entry
                break
    # One existence check for all candidate objects: an image deleted behind our back is regenerated.
    wanted = sorted({im["storage_key"] for e in candidates.values() for im in e.images})
    present = exists(wanted) if wanted else set()
    result = Diff({}, {}, [], [])
    for ref in refs:
        match = candidates.get(ref.position)
        if match is not None and all(im["storage_key"] in present for im in match.images):
            result.reused[ref.position] = match.images
            result.outcome[ref.position] = "unchanged"
        else:
            own = entries.get(ref.row_id)
            result.outcome[ref.position] = "changed" if own is not None and own.removed_at is None else "new"
    current = {ref.row_id for ref in refs}
    gone = [e for row_id, e in entries.items() if row_id not in current and e.removed_at is None]
    result.removed = sorted(e.row_id for e in gone)
    if gone:
        session.execute(sa.update(CatalogEntry).where(
            CatalogEntry.tenant == tenant, CatalogEntry.catalog == name,
            CatalogEntry.row_id.in_(result.removed)).values(removed_at=now))
    back = [ref.row_id for ref in refs if (e := entries.get(ref.row_id)) is not None and e.removed_at is not None]
    if back:
        session.execute(sa.update(CatalogEntry).where(
            CatalogEntry.tenant == tenant, CatalogEntry.catalog == name,
            CatalogEntry.row_id.in_(back)).values(removed_at=None))
    live = {im["storage_key"] for row_id, e in entries.items() if row_id in current for im in e.images}
    result.prunable = sorted({im["storage_key"] for e in gone for im in e.images} - live)
    return result


def _keys_match(entry: Entry, ref: RowRef) -> bool:
    # With a key pattern the image must already sit at this row's stable keys.
    return not ref.keys or [im["storage_key"] for im in entry.images] == ref.keys


@dataclass(frozen=True)
class Created:
    """A new or replayed catalog batch and what to do after commit."""

    batch: Batch
    created: bool
    prune: list[str]


def create(session: Session, tenant: str, plan: Plan, exists: Exists, *, default_name: str | None,
           only_changed: bool, idempotency_key: str | None, request_hash: str | None,
           read: int | None = None, source: str | None = None,
           prices: Mapping[str, Price] | None = None) -> Created:
    """Write a catalog batch: diff against the index when `only_changed`, record the summary."""
    replay = batches.find_replay(session, tenant, idempotency_key, request_hash)
    if replay is not None:
        return Created(replay, False, [])
    c = plan.request.catalog
    assert c is not None
    name = catalog_name(plan, default_name)
    if name is None:
        if only_changed:
            raise BatchRejected([ItemProblem(None, None, "catalog.name", "is required with only_changed: it names "
                                             "the catalog whose stored images are reused")])
        return Created(batches.insert_batch(session, tenant, plan, idempotency_key=idempotency_key,
                                            request_hash=request_hash, prices=prices), True, [])
    refs = row_refs(plan, tenant, name)
    now = utcnow()
    if only_changed:
        result = diff(session, tenant, name, refs, exists, now)
    else:
        result = Diff({}, {r.position: "new" for r in refs}, [], [])
    counts = result.counts(read if read is not None else len(refs))
    summary = {"catalog": name, "only_changed": only_changed, **counts, "source": source}
    extras = batches.Extras(
        catalog_refs={r.position: {"catalog": name, "row": r.row_id, "content_key": r.content_key, "keys": r.keys}
                      for r in refs},
        reused=result.reused, summary=summary)
    batch = batches.insert_batch(session, tenant, plan, idempotency_key=idempotency_key,
                                 request_hash=request_hash, extras=extras, prices=prices)
    for outcome in OUTCOMES:
        if counts[outcome]:
            metrics.incr(session, "orchestrator_catalog_rows_total", counts[outcome], outcome=outcome)
    return Created(batch, True, result.prunable if c.prune else [])


def prune(storage: Storage, keys: Iterable[str]) -> int:
    """Delete the images of removed rows (after the batch is committed); returns how many."""
    done = 0
    for key in keys:
        storage.delete(key)
        done += 1
    return done


def record_images(session: Session, job_id: uuid.UUID, tenant: str, ref: dict[str, Any]) -> None:
    """Point the row's index entry at this job's verified images (called as the job succeeds)."""
    images = [{"index": a.index, "storage_key": a.storage_key, "sha256": a.sha256, "content_type": a.content_type,
               "width": a.width, "height": a.height, "bytes": a.bytes, "seed": a.seed}
              for a in session.scalars(sa.select(Asset).where(Asset.job_id == job_id).order_by(Asset.index))]
    table = cast(sa.Table, CatalogEntry.__table__)
    values = {"tenant": tenant, "catalog": ref["catalog"], "row_id": ref["row"], "content_key": ref["content_key"],
              "images": images, "job_id": job_id, "updated_at": utcnow(), "removed_at": None}
    stmt = upsert_insert(session, table).values(**values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["tenant", "catalog", "row_id"],
        set_={k: stmt.excluded[k] for k in ("content_key", "images", "job_id", "updated_at", "removed_at")}))
