"""The /v1 client API: batches, jobs, models, OpenAPI.

Routes are declared with orchestrator.api.operations.operation; orchestrator.api.openapi writes
/v1/openapi.json from those declarations.
"""

from __future__ import annotations

import hashlib
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import ValidationError

from orchestrator import batch_lists, batches, budget, catalog, catalog_runs, intake, jsonbody, pricing, queue
from orchestrator.api.context import db, services
from orchestrator.api.openapi import document
from orchestrator.api.operations import Body, Content, operation
from orchestrator.api.params import BatchHeaders, BatchListQuery, BatchOptions, JobListQuery
from orchestrator.db import iso
from orchestrator.log import bind
from orchestrator.netpolicy import AddressPolicy
from orchestrator.responses import (
    BatchOut,
    BatchPage,
    BudgetOut,
    CancelOut,
    Estimate,
    JobDetail,
    JobEventOut,
    JobPage,
    ModelsOut,
    PricesOut,
    RetryOut,
)
from orchestrator.schemas import BatchPatch, BatchRequest, BudgetIn, Item

bp = Blueprint("v1", __name__, url_prefix="/v1")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson")
BATCH_BODY = Body(BatchRequest, tuple(Content(t, Item, description="one Item per line; options in the query")
                                      for t in JSONL_TYPES))


@operation(bp, "POST", "/batches", "Submit a batch", query=BatchOptions, headers=BatchHeaders, body=BATCH_BODY,
           responses={201: BatchOut, 200: BatchOut}, problems=(409,),
           response_headers={201: {"Location": "the batch's URL"}, 200: {"Location": "the batch's URL"}})
def create_batch(query: BatchOptions, headers: BatchHeaders) -> tuple[BatchOut, int, dict[str, str]] | Response:
    """Validate a whole batch (JSON, or JSONL with one item per line), write it in one transaction,
    then nudge dispatch. A replay with the same Idempotency-Key and body answers 200 with the same batch.
    With `"dry_run": true` (JSONL: `?dry_run=true`) nothing is written and the answer is the
    batch's Estimate, as from POST /v1/estimates. A batch that could never fit its max_cost_usd
    or the tenant's caps is refused (422, type budget-exceeded, naming the cap)."""
    settings = services().settings
    raw = request.get_data(cache=False)
    mimetype = request.mimetype or "application/json"
    plan = _plan(query, raw, mimetype)
    if plan.request.dry_run:
        return jsonify(_estimate(plan).model_dump(mode="json"))
    digest = hashlib.sha256(mimetype.encode() + b"\n" + request.query_string + b"\n" + raw).hexdigest()
    session = db()
    prune: list[str] = []
    if plan.request.catalog is not None:
        # Catalog rows get content keys; with only_changed, unchanged rows reuse their stored images.
        made = catalog_runs.create(session, g.tenant, plan, catalog_runs.storage_exists(services().storage),
                                   default_name="default", only_changed=bool(plan.request.catalog.only_changed),
                                   idempotency_key=headers.idempotency_key, request_hash=digest,
                                   prices=settings.price_table())
        batch, created, prune = made.batch, made.created, made.prune
    else:
        batch, created = batches.create_batch(session, g.tenant, plan, idempotency_key=headers.idempotency_key,
                                              request_hash=digest, prices=settings.price_table())
    if created:
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    catalog_runs.prune(services().storage, prune)
    bind(batch_id=batch.id)
    return batches.batch_out(batch), 201 if created else 200, {"Location": f"/v1/batches/{batch.id}"}


@operation(bp, "POST", "/estimates", "Estimate a batch (a dry run)", query=BatchOptions, body=BATCH_BODY,
           responses={200: Estimate})
def estimate_batch(query: BatchOptions) -> Estimate:
    """Validate a batch exactly as POST /v1/batches does and answer what it would cost, per provider and
    model, with the range when family aliases may fail over, and the tenant's budget. Writes nothing."""
    return _estimate(_plan(query, request.get_data(cache=False), request.mimetype or "application/json"))


def _plan(query: BatchOptions, raw: bytes, mimetype: str) -> intake.Plan:
    settings = services().settings
    if mimetype in JSONL_TYPES:
        req = intake.parse_jsonl(raw, query.model_dump(mode="json", exclude_none=True), settings.max_items_per_batch)
    else:
        req = intake.parse_json(raw, settings.max_items_per_batch)
    plan = intake.plan(req, settings.max_items_per_batch)
    intake.check_callback(req, AddressPolicy(settings.callback_allow_private))
    return plan


def _estimate(plan: intake.Plan) -> Estimate:
    session = db()
    _, summary = batches.estimate_plan(session, g.tenant, plan, services().settings.price_table())
    tenant_budget = budget.budget_json(session, g.tenant)
    session.rollback()
    return Estimate.model_validate({"dry_run": True, **summary,
                                    "budget": {**tenant_budget, "max_cost_usd": plan.request.max_cost_usd}})


@operation(bp, "PATCH", "/batches/<uuid:batch_id>", "Change a batch's cost cap", body=Body(BatchPatch),
           responses={200: BatchOut})
def patch_batch(batch_id: uuid.UUID) -> BatchOut:
    """Set or remove (null) the batch's max_cost_usd; jobs it held are looked at again at once."""
    change = _json_model(BatchPatch, "max_cost_usd")
    cap = budget.parse_cap("max_cost_usd", change.max_cost_usd)
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    batch.max_cost_usd = cap
    session.commit()
    # Not under the batch row lock: claimers hold job rows while they wait for it.
    if budget.release_held(session, batch_id=batch.id):
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    session.refresh(batch)
    return batches.batch_out(batch)


@operation(bp, "GET", "/prices", "List the prices", responses={200: PricesOut})
def list_prices() -> PricesOut:
    """The price table in use: defaults with ORCH_PRICES applied (contract prices, so behind a key)."""
    return PricesOut.model_validate({"data": pricing.table_json(services().settings.price_table()),
                                     "currency": "USD"})


@operation(bp, "GET", "/budget", "Get the tenant's budget", responses={200: BudgetOut})
def get_budget() -> BudgetOut:
    """This tenant's daily and monthly caps and its spend today and this month."""
    return BudgetOut.model_validate(budget.budget_json(db(), g.tenant))


@operation(bp, "PUT", "/budget", "Set the tenant's budget", auth="admin", body=Body(BudgetIn),
           responses={200: BudgetOut})
def put_budget() -> BudgetOut:
    """Set this tenant's caps (USD per calendar day / month, null removes one) and timezone; fields not
    given keep their value. Jobs held by the budget are looked at again at once."""
    data = jsonbody.loads_batch_body(request.get_data(cache=False))
    if not isinstance(data, dict):
        raise budget.InvalidBudget("send a JSON object with daily_usd, monthly_usd and/or timezone", field="body")
    session = db()
    budget.set_budget(session, g.tenant, data)
    session.commit()
    # Not under the budget row lock: claimers hold job rows while they wait for it.
    if budget.release_held(session, tenant=g.tenant):
        services().publisher.after_commit(session, queue.DISPATCH)
    session.commit()
    return BudgetOut.model_validate(budget.budget_json(session, g.tenant))


def _json_model(model: type[BatchPatch], name: str) -> BatchPatch:
    data = jsonbody.loads_batch_body(request.get_data(cache=False))
    try:
        return model.model_validate(data)
    except ValidationError:
        raise budget.InvalidBudget(f'send {{"{name}": <USD or null>}}; nothing else can change',
                                   field=name) from None


@operation(bp, "GET", "/batches", "List batches", query=BatchListQuery, responses={200: BatchPage})
def list_batches(query: BatchListQuery) -> BatchPage:
    """This tenant's batches, newest first."""
    rows, nxt = batch_lists.list_batches(db(), g.tenant, states=_split(query.state), cursor=query.cursor,
                                     limit=query.limit, filters=batch_lists.BatchFilter(
                                         schedule_id=query.schedule_id, provider=query.provider, model=query.model,
                                         lane=query.lane, search=query.q, parent_batch_id=query.parent_batch_id))
    held = budget.held_counts(db(), [b.id for b in rows if b.count_queued])
    return BatchPage(data=[batches.batch_out(b, held.get(b.id, 0)) for b in rows], next_cursor=nxt)


@operation(bp, "GET", "/batches/<uuid:batch_id>", "Get a batch", responses={200: BatchOut})
def get_batch(batch_id: uuid.UUID) -> BatchOut:
    """One batch with its counts."""
    return batches.batch_out(batches.get_batch(db(), g.tenant, batch_id))


@operation(bp, "GET", "/batches/<uuid:batch_id>/jobs", "List the jobs of a batch", query=JobListQuery,
           responses={200: JobPage})
def list_jobs(batch_id: uuid.UUID, query: JobListQuery) -> JobPage:
    """A batch's jobs by position, filtered by state."""
    batch = batches.get_batch(db(), g.tenant, batch_id)
    rows, nxt = batch_lists.list_jobs(db(), batch, states=_split(query.state), cursor=query.cursor, limit=query.limit)
    return JobPage(data=[batches.job_out(j) for j in rows], next_cursor=nxt)


@operation(bp, "POST", "/batches/<uuid:batch_id>/cancel", "Cancel a batch", responses={200: CancelOut})
def cancel_batch(batch_id: uuid.UUID) -> CancelOut:
    """Cancel unfinished jobs at once; ask the provider to drop requests it already has."""
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    count, at_provider = batches.cancel(session, batch)
    for job_id in at_provider:
        services().publisher.after_commit(session, queue.CANCEL_AT_PROVIDER, str(job_id))
    session.commit()
    session.refresh(batch)
    return CancelOut(**batches.batch_out(batch).model_dump(), cancelled_jobs=count)


@operation(bp, "POST", "/batches/<uuid:batch_id>/retry", "Retry the failed jobs of a batch",
           responses={200: RetryOut})
def retry_batch(batch_id: uuid.UUID) -> RetryOut:
    """Re-queue the failed jobs of a batch; succeeded jobs are untouched."""
    session = db()
    batch = batches.get_batch(session, g.tenant, batch_id)
    count = batches.retry(session, batch)  # the re-queued jobs' claim round follows the commit
    session.commit()
    session.refresh(batch)
    return RetryOut(**batches.batch_out(batch).model_dump(), requeued_jobs=count)


@operation(bp, "GET", "/jobs/<uuid:job_id>", "Get a job", responses={200: JobDetail})
def get_job(job_id: uuid.UUID) -> JobDetail:
    """One job with its timeline."""
    job = batches.get_job(db(), g.tenant, job_id)
    events = [JobEventOut(kind=e.kind, attempt=e.attempt, from_=e.from_state, to=e.to_state, detail=e.detail,
                          at=iso(e.created_at) or "") for e in batches.job_events(db(), job.id)]
    return JobDetail(**batches.job_fields(job), events=events)


@operation(bp, "GET", "/models", "List the models", auth=None, responses={200: ModelsOut})
def list_models() -> ModelsOut:
    """The model catalog and family aliases (public, no key needed)."""
    return ModelsOut(data=[m.public() for m in catalog.MODELS.values()],
                     aliases={k: list(v) for k, v in catalog.ALIASES.items()})


@operation(bp, "GET", "/openapi.json", "Get this OpenAPI document", auth=None,
           responses={200: Content("application/json", schema={"type": "object"}, description="OpenAPI 3.1")})
def openapi() -> Response:
    """The OpenAPI document, generated from the route declarations and their pydantic models."""
    return jsonify(document(current_app, "Image generation batch orchestrator", "1"))


def _split(values: list[str]) -> list[str]:
    return [s for value in values for s in value.split(",") if s]


