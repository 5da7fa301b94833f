"""The chaos audit: what the database, the API, the sandboxes' ledgers and the storage say after a run.

Every figure is counted from outside the code under test: the ledgers are the providers' own
record of what was accepted (and so paid for), the storage directory is what a user would
download, and the manifest and callbacks are what a client sees.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import webhook_urls
from orchestrator.models import Asset, Batch, Job, JobEvent
from orchestrator.state import TERMINAL, final_state

# Timeline event written for every resubmission after an unknown submit outcome (see maintenance.py).
RESUBMIT_EVENT = "unknown_outcome_resubmit"
STATES = ("queued", "submitting", "submitted", "storing", "succeeded", "failed", "cancelled")


@dataclass
class Audit:
    """Figures of one run; `problems` lists every failed check in words."""

    jobs: int = 0
    batches: int = 0
    states: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    not_final: int = 0
    batches_not_final: int = 0
    accepted: Counter[str] = field(default_factory=Counter)  # per provider
    paid_twice: int = 0  # accepted submissions beyond one (and beyond allowed resubmissions) per non-failed job
    paid_generations: int = 0  # provider requests that produced a successful result (what is billed)
    results_discarded: int = 0  # a successful result of one attempt delivered to us, yet the job kept another's
    adopted: int = 0  # jobs that took an earlier (or already re-queued) attempt's result
    resubmits_by_policy: Counter[str] = field(default_factory=Counter)  # unknown-outcome resubmissions
    duplicate_assets: int = 0
    incomplete_jobs: int = 0  # succeeded with fewer stored images than asked for
    objects_checked: int = 0
    sha_mismatches: int = 0
    orphan_objects: int = 0
    counter_mismatches: int = 0
    manifest_lines: int = 0
    manifest_mismatches: int = 0
    callbacks: int = 0  # POSTs received (redeliveries of one event included)
    callback_redeliveries: int = 0
    missing_callbacks: int = 0
    double_completions: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)


def job_of(url: str | None) -> str | None:
    found = webhook_urls.parse(url)
    return str(found.job_id) if found else None


def audit(db_url: str, api_url: str, token: str, ledgers: dict[str, dict[str, Any]], storage: Path,
          callbacks: list[tuple[dict[str, str], bytes]]) -> Audit:
    """Run every check."""
    a = Audit()
    engine = sa.create_engine(db_url)
    try:
        with Session(engine) as conn:
            jobs = conn.execute(sa.select(Job.id, Job.batch_id, Job.state, Job.error_code, Job.num_images,
                                          Job.provider)).all()
            batches = list(conn.execute(sa.select(Batch)).scalars())
            assets = conn.execute(sa.select(Asset.job_id, Asset.index, Asset.storage_key, Asset.sha256,
                                            Asset.bytes, Asset.stored_at, Asset.provider_image_id)).all()
            resubmits = conn.execute(sa.select(JobEvent.job_id, JobEvent.detail)
                                     .where(JobEvent.kind == RESUBMIT_EVENT)).all()
            a.adopted = conn.scalar(sa.select(sa.func.count()).select_from(JobEvent)
                                    .where(JobEvent.kind == "earlier_result_adopted")) or 0
        _jobs(a, jobs, batches)
        _payments(a, jobs, ledgers, resubmits)
        _discarded(a, jobs, ledgers, assets)
        _assets(a, jobs, assets, storage)
        _counters(a, jobs, batches)
        _manifests(a, api_url, token, batches, jobs, assets)
        _callbacks(a, batches, callbacks)
    finally:
        engine.dispose()
    return a


def _jobs(a: Audit, jobs: list[Any], batches: list[Any]) -> None:
    a.jobs, a.batches = len(jobs), len(batches)
    for j in jobs:
        a.states[j.state.value] += 1
        if j.state.value == "failed":
            a.failed_by_code[j.error_code or "?"] += 1
        if j.state not in TERMINAL:
            a.not_final += 1
            a.problem(f"job {j.id} not final: {j.state.value}")
    a.batches_not_final = sum(b.completed_at is None for b in batches)


def _payments(a: Audit, jobs: list[Any], ledgers: dict[str, dict[str, Any]], resubmits: list[Any]) -> None:
    per_job: Counter[str] = Counter()
    for provider, ledger in ledgers.items():
        for sub in ledger.get("submissions", []):
            if sub.get("outcome") == "accepted":
                a.accepted[provider] += 1
                per_job[job_of(sub.get("webhook_url")) or "?"] += 1
    allowed: Counter[str] = Counter()
    for r in resubmits:
        allowed[str(r.job_id)] += 1
        a.resubmits_by_policy[(r.detail or {}).get("policy", "?")] += 1
    for j in jobs:
        if j.state.value == "failed":
            continue  # a failed generation is not an image paid for
        extra = per_job.get(str(j.id), 0) - 1 - allowed.get(str(j.id), 0)
        if extra > 0:
            a.paid_twice += extra
            a.problem(f"job {j.id} ({j.provider}) accepted {per_job[str(j.id)]}x, "
                      f"{allowed.get(str(j.id), 0)} resubmission(s) allowed by policy")


def _discarded(a: Audit, jobs: list[Any], ledgers: dict[str, dict[str, Any]], assets: list[Any]) -> None:
    """Paid results thrown away: an attempt's successful result reached us, but the job kept another attempt's.

    The attempt a stored image came from: fal assets are keyed `attempt:index`; Runware assets by
    imageUUID, which the ledger maps to the webhook (and so the attempt) that carried it.
    """
    image_attempt: dict[str, int] = {}
    delivered: dict[str, set[int]] = defaultdict(set)  # job -> attempts whose good result was delivered
    paid: set[str] = set()
    for d in (d for ledger in ledgers.values() for d in ledger.get("deliveries", [])):
        if d.get("kind") != "webhook":
            continue
        good = d.get("result_status") == 200 if d.get("provider") == "fal" else bool(d.get("image_uuid"))
        if not good:
            continue
        paid.add(str(d.get("request_id") or d.get("task_uuid")))
        found = webhook_urls.parse(d.get("url"))
        if found is None:
            continue
        job, attempt = str(found.job_id), found.attempt
        if d.get("image_uuid"):
            image_attempt[d["image_uuid"]] = attempt
        if d.get("outcome") == "delivered":
            delivered[job].add(attempt)
    a.paid_generations = len(paid)
    kept: dict[str, set[int]] = defaultdict(set)
    for r in assets:
        key = r.provider_image_id or ""
        attempt = image_attempt.get(key) or (int(key.split(":")[0]) if key.split(":")[0].isdigit() else None)
        if attempt is not None:
            kept[str(r.job_id)].add(attempt)
    for j in jobs:
        if j.state.value != "succeeded":
            continue
        lost = delivered.get(str(j.id), set()) - kept.get(str(j.id), set())
        if lost and kept.get(str(j.id)) and min(lost) < min(kept[str(j.id)]):
            a.results_discarded += 1
            a.problem(f"job {j.id}: attempt {min(lost)}'s result was delivered and dropped; "
                      f"the job kept attempt {min(kept[str(j.id)])}'s (paid twice)")


def _assets(a: Audit, jobs: list[Any], assets: list[Any], storage: Path) -> None:
    by_key = Counter((r.job_id, r.index) for r in assets)
    a.duplicate_assets = sum(n - 1 for n in by_key.values() if n > 1)
    stored = Counter(r.job_id for r in assets if r.stored_at is not None)
    for j in jobs:
        if j.state.value == "succeeded" and stored.get(j.id, 0) != j.num_images:
            a.incomplete_jobs += 1
            a.problem(f"job {j.id} succeeded with {stored.get(j.id, 0)}/{j.num_images} images stored")
    referenced: set[str] = set()
    for r in assets:
        if r.stored_at is None or not r.storage_key:
            continue
        referenced.add(r.storage_key)
        a.objects_checked += 1
        path = storage / r.storage_key
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != r.sha256 or len(data) != r.bytes:
            a.sha_mismatches += 1
            a.problem(f"object {r.storage_key}: {'missing' if data is None else 'sha256/size differs from record'}")
    if storage.is_dir():
        for path in storage.rglob("*"):
            # `.upload-*.part` files are uploads interrupted by a kill: never renamed into place.
            if path.is_file() and not path.name.startswith(".upload-"):
                key = path.relative_to(storage).as_posix()
                if key not in referenced:
                    a.orphan_objects += 1
                    a.problem(f"object {key} in storage with no stored asset")


def _counters(a: Audit, jobs: list[Any], batches: list[Any]) -> None:
    actual: dict[Any, Counter[str]] = defaultdict(Counter)
    for j in jobs:
        actual[j.batch_id][j.state.value] += 1
    for b in batches:
        have = {s: getattr(b, f"count_{s}") for s in STATES}
        want = {s: actual[b.id].get(s, 0) for s in STATES}
        wrong = have != want or b.total != sum(want.values())
        if b.completed_at is not None and not wrong:
            expect = final_state(want["succeeded"], want["failed"], want["cancelled"]).value
            wrong = b.state.value != expect
        if wrong:
            a.counter_mismatches += 1
            a.problem(f"batch {b.id} counters {have} state {b.state.value}, jobs say {want}")


def _manifests(a: Audit, api_url: str, token: str, batches: list[Any], jobs: list[Any], assets: list[Any]) -> None:
    by_job = {str(j.id): j for j in jobs}
    sha = defaultdict(dict)
    for r in assets:
        if r.stored_at is not None:
            sha[str(r.job_id)][r.index] = r.sha256
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        for row in batches:
            b = row
            resp = client.get(f"/v1/batches/{b.id}/results")
            if resp.status_code != 200:
                a.manifest_mismatches += 1
                a.problem(f"manifest of batch {b.id}: HTTP {resp.status_code}")
                continue
            lines = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
            a.manifest_lines += len(lines)
            if len(lines) != b.total or len({ln["job_id"] for ln in lines}) != b.total:
                a.manifest_mismatches += 1
                a.problem(f"manifest of batch {b.id}: {len(lines)} lines for {b.total} jobs")
            for ln in lines:
                job = by_job.get(ln["job_id"])
                images = {img["index"]: img["sha256"] for img in ln["images"]}
                ok = job is not None and ln["status"] == job.state.value and images == sha[ln["job_id"]]
                if ok and job.state.value == "succeeded":
                    ok = len(images) == job.num_images
                if not ok:
                    a.manifest_mismatches += 1
                    a.problem(f"manifest line for job {ln['job_id']} disagrees with the database")


def _callbacks(a: Audit, batches: list[Any], callbacks: list[tuple[dict[str, str], bytes]]) -> None:
    events: dict[str, set[str]] = defaultdict(set)
    a.callbacks = len(callbacks)
    seen: Counter[str] = Counter()
    for headers, body in callbacks:
        try:
            batch_id = json.loads(body)["data"]["id"]
        except (ValueError, KeyError, TypeError):
            a.problem("a completion callback that is not a batch.completed event")
            continue
        msg = headers.get("webhook-id", "")
        seen[msg] += 1
        events[batch_id].add(msg)
    a.callback_redeliveries = sum(n - 1 for n in seen.values() if n > 1)
    for b in batches:
        n = len(events.get(str(b.id), set()))
        if b.completion_round > 1 or n > 1:
            a.double_completions += 1
            a.problem(f"batch {b.id} completed {max(b.completion_round, n)} times")
        if b.completed_at is not None and b.callback_url and n == 0:
            a.missing_callbacks += 1
            a.problem(f"batch {b.id} is final but its client was never called back")


def injected(ledgers: dict[str, dict[str, Any]]) -> Counter[str]:
    """How many of each sandbox fault the ledgers show."""
    out: Counter[str] = Counter()
    for ledger in ledgers.values():
        for sub in ledger.get("submissions", []):
            status = sub.get("http_status") or 0
            if sub.get("outcome") == "rejected" and status == 429:
                out["submit 429 (Retry-After)"] += 1
            elif sub.get("outcome") == "rejected" and status >= 500:
                out["submit 5xx"] += 1
            if sub.get("answer_lost"):
                out["submit accepted, answer lost"] += 1
        for d in ledger.get("deliveries", []):
            if d.get("kind") != "webhook":
                continue
            if d.get("outcome") == "dropped":
                out["webhook dropped"] += 1
                continue
            if d.get("attempt") != 1:
                continue
            if d.get("copy"):
                out["webhook duplicated"] += 1
            elif d.get("delayed"):
                out["webhook delayed"] += 1
            if d.get("reordered") and not d.get("copy"):
                out["webhook reordered (window)"] += 1
    return out
