"""The Runware sandbox: `POST /v1` task arrays, sync/async imageInference, getResponse, webhooks, uploads.

`RunwareRunner` (runner.py) holds the jobs and runs them; this module is the task API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp import web

from orchestrator.sandbox.common.faults import Faults
from orchestrator.sandbox.common.ledger import key_label
from orchestrator.sandbox.common.server import retry_after
from orchestrator.sandbox.runware.config import RunwareConfig
from orchestrator.sandbox.runware.runner import RunwareJob, RunwareRunner
from orchestrator.sandbox.runware.tasks import ImageTask, TaskError, task_error, validate_image_task

INVALID_KEY = "Invalid API key. Get one at https://my.runware.ai/signup"
_REJECTIONS = {
    429: ("rateLimitExceeded", "Queue capacity exceeded. Retry with exponential backoff."),
    402: ("insufficientCredits", "Insufficient credits. Top up your account balance."),
    500: ("internalServerError", "Internal server error."),
    502: ("badGateway", "Bad gateway."),
    503: ("serviceUnavailable", "Service temporarily unavailable."),
    504: ("timeout", "Timed out waiting in the model queue."),
}


class RunwareSandbox(RunwareRunner):
    """Local emulator of Runware's REST task API for the project's FLUX models."""

    def __init__(self, config: RunwareConfig | None = None, **overrides: Any) -> None:
        super().__init__(dataclasses.replace(config or RunwareConfig(), **overrides))

    @property
    def api_url(self) -> str:
        """The task endpoint (`http_base_url` for Runware's SDK)."""
        return f"{self.url}/v1"

    # -- routes -----------------------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1", self._handle_tasks)
        app.router.add_post("/v1/", self._handle_tasks)

    # -- request level --------------------------------------------------------------------------------------

    async def _handle_tasks(self, request: web.Request) -> web.StreamResponse:
        try:
            tasks = await request.json()
        except ValueError:
            tasks = None
        if not isinstance(tasks, list) or not tasks:
            msg = "The request body must be a non-empty JSON array of task objects."
            return _respond([], [task_error("invalidRequestBody", msg, None)])
        key, tasks = self._authenticate(request, tasks)
        if key is None:
            return _respond(
                [], [task_error("invalidApiKey", INVALID_KEY, {"taskType": "authentication"}, "apiKey", http=401)]
            )
        image_tasks = [t for t in tasks if isinstance(t, dict) and t.get("taskType") == "imageInference"]
        faults = self.faults.for_model(str(image_tasks[0].get("model"))) if image_tasks else self.faults
        hanging = False
        if image_tasks:
            hanging = await self.submit_stall(request, faults)
            if hanging and not faults.submit_timeout_accepts:
                for task in image_tasks:
                    self._record(task, key, outcome="timeout")
                await self.lose_answer(request, faults)
            rejection = None if hanging else self._inject_rejection(image_tasks, key, faults)
            if rejection is not None:
                return rejection
        elif self.dice.chance(faults.poll_500_rate) and _has_poll(tasks):
            return _respond([], [task_error("internalServerError", "Internal server error.", None, http=500)])
        outcomes = await asyncio.gather(*(self._dispatch(task, key, answer_lost=hanging) for task in tasks))
        if hanging:  # the tasks are known to getResponse while the answer is held back
            await self.lose_answer(request, faults)
        data = [item for items, _ in outcomes for item in items]
        errors = [err for _, errs in outcomes for err in errs]
        return _respond(data, errors)

    def _authenticate(self, request: web.Request, tasks: list[Any]) -> tuple[str | None, list[Any]]:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        key = credential.strip() if scheme.lower() == "bearer" else None
        first = tasks[0]
        if isinstance(first, dict) and first.get("taskType") == "authentication":
            key = key or first.get("apiKey")
            tasks = tasks[1:]
        return (key if key in self.config.keys else None), tasks

    def _inject_rejection(self, image_tasks: list[dict[str, Any]], key: str, faults: Faults) -> web.Response | None:
        status = self.roll_submit_error(faults, (429, 402, 500, 502, 503, 504))
        if status is None:
            return None
        code, message = _REJECTIONS[status]
        errors = [task_error(code, message, task, http=status) for task in image_tasks]
        for task in image_tasks:
            self._record(task, key, outcome="rejected", http_status=status)
        headers = {"Retry-After": retry_after(faults)} if status in (429, 503) else None
        return _respond([], errors, headers)

    async def _dispatch(self, task: Any, key: str, answer_lost: bool = False
                        ) -> tuple[list[dict[str, Any]], list[TaskError]]:
        if not isinstance(task, dict):
            return [], [task_error("invalidTask", "Each task must be a JSON object.", None)]
        task_type = task.get("taskType")
        if task_type == "imageInference":
            return await self._image_inference(task, key, answer_lost)
        if task_type == "getResponse":
            return self._get_response(task, key)
        if task_type == "ping":
            return [{"taskType": "ping", "pong": True}], []
        msg = f"Unsupported taskType '{task_type}'."
        return [], [task_error("unsupportedTaskType", msg, task, "taskType")]

    # -- imageInference ----------------------------------------------------------------------------------------

    async def _image_inference(self, task: dict[str, Any], key: str, answer_lost: bool = False
                               ) -> tuple[list[dict[str, Any]], list[TaskError]]:
        checked = validate_image_task(task, self.config)
        if isinstance(checked, list):
            self._record(task, key, outcome="rejected", http_status=400)
            return [], checked
        refused = self._refuse(checked, task, key)
        if refused is not None:
            self._record(task, key, outcome="rejected", http_status=refused.http)
            return [], [refused]
        job = self._start_job(checked, key)
        self._record(task, key, outcome="accepted", http_status=200, **({"answer_lost": True} if answer_lost else {}))
        if checked.delivery == "async":
            return [job.ref], []
        try:
            await asyncio.wait_for(job.done.wait(), self.config.sync_timeout)
        except TimeoutError:
            msg = "The task did not finish within the sync window; it keeps running, fetch it with getResponse."
            return [], [task_error("timeout", msg, task, http=504)]
        return _sync_items(job)

    def _refuse(self, checked: ImageTask, task: dict[str, Any], key: str) -> TaskError | None:
        if checked.task_uuid in self._jobs:
            msg = f"taskUUID '{checked.task_uuid}' was already used; send a new UUIDv4 per task."
            return task_error("duplicateTaskUUID", msg, task, "taskUUID")
        capacity = self.config.capacity
        if capacity is not None and self.ledger.inflight(key) >= capacity:
            code, message = _REJECTIONS[429]
            return task_error(code, message, task, http=429)
        return None

    # -- getResponse --------------------------------------------------------------------------------------------

    def _get_response(self, task: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], list[TaskError]]:
        task_uuid = task.get("taskUUID")
        job = self._jobs.get(task_uuid) if isinstance(task_uuid, str) else None
        if job is not None and job.expires_at is not None and time.monotonic() >= job.expires_at:
            del self._jobs[job.task.task_uuid]
            job = None
        if job is None or job.key != key:
            msg = f"Task '{task_uuid}' failed or was not found."
            return [], [task_error("taskFailedOrNotFound", msg, task, "taskUUID", http=404)]
        data: list[dict[str, Any]] = []
        errors: list[TaskError] = []
        for slot in job.slots:
            if slot is None:
                data.append({**job.ref, "status": "processing"})
            elif isinstance(slot, dict):
                data.append({**slot, "status": "success"})
            else:
                # Reporting a failed task is a successful poll.
                errors.append(TaskError({**slot.body, "status": "error"}, http=200))
        return data, errors

    def _record(self, task: dict[str, Any], key: str, **outcome: Any) -> None:
        self.ledger.record_submission(
            provider="runware",
            model=task.get("model"),
            key=key_label(key),
            input=task,
            task_uuid=task.get("taskUUID"),
            webhook_url=task.get("webhookURL"),
            **outcome,
        )


def _has_poll(tasks: list[Any]) -> bool:
    return any(isinstance(t, dict) and t.get("taskType") == "getResponse" for t in tasks)


def _sync_items(job: RunwareJob) -> tuple[list[dict[str, Any]], list[TaskError]]:
    data = [slot for slot in job.slots if isinstance(slot, dict)]
    errors = [slot for slot in job.slots if isinstance(slot, TaskError)]
    return data, errors


def _respond(
    data: list[dict[str, Any]], errors: list[TaskError], headers: dict[str, str] | None = None
) -> web.Response:
    """`{"data": [...], "errors": [...]}`: 200 when anything succeeded, else the errors' own status."""
    body: dict[str, Any] = {"data": data}
    if errors:
        body["errors"] = [e.body for e in errors]
    status = 200 if data or not errors else max(e.http for e in errors)
    return web.json_response(body, status=status, headers=headers)
