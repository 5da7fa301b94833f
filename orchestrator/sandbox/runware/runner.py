"""Running Runware tasks: one job per imageInference task, each image rendered, billed and delivered."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.sandbox.common.faults import Faults
from orchestrator.sandbox.common.ids import new_uuid
from orchestrator.sandbox.common.images import ImageSpec
from orchestrator.sandbox.common.server import BaseSandbox
from orchestrator.sandbox.common.webhooks import Delivery
from orchestrator.sandbox.runware.config import RunwareConfig
from orchestrator.sandbox.runware.tasks import ImageTask, TaskError, cost, task_error

_FAILURES = {
    500: ("timeoutProvider", "The provider did not respond in time."),
    422: ("contentPolicyViolation", "The content was rejected by the provider's content policy."),
}

Slot = dict[str, Any] | TaskError | None  # None: still processing


@dataclass(eq=False)
class RunwareJob:
    """One accepted imageInference task and the state of each of its images."""

    task: ImageTask
    key: str
    first_seed: int
    slots: list[Slot]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expires_at: float | None = None  # monotonic; set when every image is finished

    @property
    def ref(self) -> dict[str, str]:
        """The task's identity in Runware answers."""
        return {"taskType": "imageInference", "taskUUID": self.task.task_uuid}


class RunwareRunner(BaseSandbox):
    """The Runware sandbox's jobs and their execution; `RunwareSandbox` adds the task API on top."""

    provider = "runware"
    media_prefix = "/image"
    config: RunwareConfig

    def __init__(self, config: RunwareConfig) -> None:
        super().__init__(config)
        self._jobs: dict[str, RunwareJob] = {}

    # -- state ------------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._jobs = {}

    def _busy(self) -> bool:
        return any(not job.done.is_set() for job in self._jobs.values())

    # -- running ----------------------------------------------------------------------------------------------

    def _start_job(self, checked: ImageTask, key: str) -> RunwareJob:
        first_seed = checked.seed if checked.seed is not None else 1 + self.dice.bits(31)
        job = RunwareJob(checked, key, first_seed, [None] * checked.number_results)
        self._jobs[checked.task_uuid] = job
        self.ledger.started(key)
        for index in range(checked.number_results):
            self.spawn(self._run_image(job, index))
        return job

    async def _run_image(self, job: RunwareJob, index: int) -> None:
        faults = self.faults.for_model(job.task.model)
        await asyncio.sleep(self.dice.uniform(faults.latency_min, faults.latency_max))
        data = b""
        if self.dice.chance(faults.failure_rate):
            code, message = _FAILURES.get(faults.failure_status, ("inferenceError", "Inference failed."))
            slot: Slot = task_error(code, message, job.ref, http=500)
        else:
            slot, data = await self._make_item(job, index, faults)
        job.slots[index] = slot
        if all(s is not None for s in job.slots):
            ttl = self.config.task_ttl if faults.result_ttl is None else faults.result_ttl
            job.expires_at = time.monotonic() + ttl
            job.done.set()
            self.ledger.finished(job.key)
        self._deliver(job, slot, data, faults)

    async def _make_item(self, job: RunwareJob, index: int, faults: Faults) -> tuple[dict[str, Any], bytes]:
        task = job.task
        nsfw = bool(task.safety) and self.dice.chance(faults.nsfw_rate)
        spec = ImageSpec(task.prompt, job.first_seed + index, task.width, task.height, task.output_format, blank=nsfw)
        data = await self.render(spec)
        image_uuid = new_uuid()
        item: dict[str, Any] = {**job.ref, "imageUUID": image_uuid}
        if "URL" in task.output_types:
            ttl = self.media_ttl(faults, float(task.ttl or self.config.media_ttl))
            item["imageURL"] = f"{self.url}{self.media_prefix}/{self.media.add(spec, len(data), ttl, image_uuid)}"
        encoded = base64.b64encode(data).decode()
        if "base64Data" in task.output_types:
            item["imageBase64Data"] = encoded
        if "dataURI" in task.output_types:
            item["imageDataURI"] = f"data:{spec.content_type};base64,{encoded}"
        item["seed"] = spec.seed
        if task.safety is not None:
            item["NSFWContent"] = nsfw
        # Every image is billed; its cost is only reported with includeCost.
        self.ledger.record_charge(job.key, model=task.model, request_id=task.task_uuid, images=1,
                                  megapixels=round(task.width * task.height / 1024**2, 6), usd=cost(task))
        if task.include_cost:
            item["cost"] = cost(task)
        return item, data

    # -- webhooks and uploads ---------------------------------------------------------------------------------

    def _deliver(self, job: RunwareJob, slot: Slot, data: bytes, faults: Faults) -> None:
        task = job.task
        sent: asyncio.Future[None] | None = None
        if task.webhook_url and (isinstance(slot, dict) or faults.webhook_send_failures):
            if isinstance(slot, dict):
                body: dict[str, Any] = slot if faults.webhook_flat else {"data": [slot]}
                ref = {"provider": "runware", "task_uuid": task.task_uuid, "image_uuid": slot["imageUUID"]}
            else:
                assert slot is not None
                body = {"errors": [{**slot.body, "status": "error"}]}
                ref = {"provider": "runware", "task_uuid": task.task_uuid, "image_uuid": None}
            sent = self.sender.send(Delivery(task.webhook_url, json.dumps(body).encode(), ref), faults)
        if task.upload_endpoint and isinstance(slot, dict):
            self.spawn(self._upload(job, slot, data, sent, faults))

    async def _upload(
        self, job: RunwareJob, item: dict[str, Any], data: bytes, sent: asyncio.Future[None] | None, faults: Faults
    ) -> None:
        # The PUT follows the webhook (or, without one, the answer that carries the result).
        if sent is not None:
            await sent
        else:
            await job.done.wait()
            await asyncio.sleep(0.05)
        if faults.upload_delay_seconds:
            await asyncio.sleep(faults.upload_delay_seconds)
        content_type = ImageSpec("", 0, 1, 1, job.task.output_format).content_type
        assert job.task.upload_endpoint is not None
        ref = {"provider": "runware", "task_uuid": job.task.task_uuid, "image_uuid": item["imageUUID"]}
        if self.dice.chance(faults.upload_corrupt_rate):
            # Marked on the ledger, so a test knows which PUT carried a bad file.
            data, ref = data[: len(data) // 2], {**ref, "corrupted": True}
        delivery = Delivery(
            job.task.upload_endpoint,
            data,
            ref,
            headers=lambda: {"Content-Type": content_type},
            method="PUT",
            kind="upload",
            retries=0,
        )
        if self.dice.chance(faults.upload_drop_rate):
            self.sender.drop(delivery)
        else:
            self.sender.send(delivery, faults)
