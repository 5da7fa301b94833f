"""Running fal requests: per-key queues, generation, stored results and the signed webhook of each."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import time
from collections import Counter, defaultdict
from typing import Any

from orchestrator.sandbox.common.faults import Faults
from orchestrator.sandbox.common.ids import new_uuid
from orchestrator.sandbox.common.images import ImageSpec
from orchestrator.sandbox.common.server import BaseSandbox
from orchestrator.sandbox.common.webhooks import Delivery
from orchestrator.sandbox.fal.config import FalConfig
from orchestrator.sandbox.fal.models import FAILURES, MODELS, FalInput, failure_body, validate
from orchestrator.sandbox.fal.queue import COMPLETED, IN_PROGRESS, IN_QUEUE, FalRequest, KeyQueue, app_path
from orchestrator.sandbox.fal.webhooks import WebhookSigner, error_body, ok_body, payload_error_body


class FalRunner(BaseSandbox):
    """The fal sandbox's request state and execution; `FalSandbox` adds the HTTP routes on top."""

    provider = "fal"
    media_prefix = "/files"
    config: FalConfig

    def __init__(self, config: FalConfig) -> None:
        self.signer = WebhookSigner()
        super().__init__(config)
        self._apps = {app_path(m) for m in config.models}
        self._requests: dict[str, FalRequest] = {}
        self._queues: defaultdict[str, KeyQueue] = defaultdict(KeyQueue)
        self._queued_by_model: Counter[str] = Counter()
        self._changed: asyncio.Event | None = None

    # -- state ------------------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return any(len(q) or q.running for q in self._queues.values())

    async def _pump_all(self) -> None:
        for key in list(self._queues):
            self._pump(key)

    def _reset_state(self) -> None:
        for request in self._requests.values():
            if request.task is not None:
                request.task.cancel()
        self._requests = {}
        self._queues = defaultdict(KeyQueue)
        self._queued_by_model = Counter()

    def _enqueue(
        self, endpoint: str, key: str, payload: Any, webhook_url: str | None, priority: str, timeout: float | None
    ) -> tuple[FalRequest, int]:
        """Validate and queue a submit; returns the request and its queue position (0-based)."""
        checked = validate(MODELS[endpoint], payload, self.config.max_image_side, self.config.max_num_images)
        fal_request = FalRequest(
            id=new_uuid(),
            model=endpoint,
            key=key,
            params=checked if isinstance(checked, FalInput) else None,
            invalid=None if isinstance(checked, FalInput) else checked,
            webhook_url=webhook_url,
            priority=priority,
        )
        self._requests[fal_request.id] = fal_request
        self._queues[key].push(fal_request)
        self._queued_by_model[endpoint] += 1
        position = self._queues[key].position(fal_request)
        if timeout is not None:
            asyncio.get_running_loop().call_later(timeout, self._start_deadline, fal_request)
        self._pump(key)
        return fal_request, position

    def _withdraw(self, fal_request: FalRequest) -> None:
        """Take a waiting request out of its queue; it will never run."""
        self._queues[fal_request.key].remove(fal_request)
        self._queued_by_model[fal_request.model] -= 1

    def _lookup(self, app: str, request_id: str, key: str) -> FalRequest | None:
        fal_request = self._requests.get(request_id)
        if fal_request is None or fal_request.app != app or fal_request.key != key:
            return None
        if fal_request.expired():
            del self._requests[request_id]
            return None
        return fal_request

    def _urls(self, fal_request: FalRequest) -> dict[str, Any]:
        base = f"{self.url}/{fal_request.app}/requests/{fal_request.id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    # -- running --------------------------------------------------------------------------------------------

    def _pump(self, key: str) -> None:
        """Start waiting requests of `key` while it has free concurrency slots."""
        if self.closing:
            return
        queue = self._queues[key]
        started = False
        while queue.running < self.config.concurrency:
            fal_request = queue.pop()
            if fal_request is None:
                break
            self._queued_by_model[fal_request.model] -= 1
            queue.running += 1
            self.ledger.started(key)
            fal_request.state = IN_PROGRESS
            fal_request.log("Request started")
            fal_request.task = asyncio.get_running_loop().create_task(self._execute(fal_request))
            # A done callback, not try/finally inside the task: a task cancelled before its first
            # step (a cancel handled right after the slot was given) never enters its coroutine.
            fal_request.task.add_done_callback(functools.partial(self._finished, fal_request, queue))
            started = True
        if started:
            self._notify()

    def _finished(self, fal_request: FalRequest, queue: KeyQueue, task: asyncio.Task[None]) -> None:
        """Free the request's slot; a client's cancel completes it as 499 (shutdown and reset do not)."""
        if task.cancelled() and fal_request.cancel_requested:
            self._fail(fal_request, 499)
        queue.running -= 1
        self.ledger.finished(fal_request.key)
        self._pump(fal_request.key)

    async def _execute(self, fal_request: FalRequest) -> None:
        faults = self.faults.for_model(fal_request.model)
        if fal_request.params is None:
            fal_request.log("Input validation failed", "ERROR")
            self._complete(fal_request, 422, {"detail": fal_request.invalid}, error="Invalid status code: 422")
            return
        latency = self.dice.uniform(faults.latency_min, faults.latency_max)
        await asyncio.sleep(latency)
        fal_request.metrics = {"inference_time": round(latency, 4)}
        if self.dice.chance(faults.failure_rate):
            self._fail(fal_request, faults.failure_status)
            return
        output = await self._output(fal_request.params, faults, latency)
        fal_request.log(f"Generated {len(output['images'])} image(s)")
        self._charge(fal_request, output["images"])
        self._complete(fal_request, 200, output)

    def _charge(self, fal_request: FalRequest, images: list[dict[str, Any]]) -> None:
        # fal bills successful output only, per megapixel rounded up per image; the result carries no cost.
        megapixels = sum(max(1, math.ceil(i["width"] * i["height"] / 1024**2)) for i in images)
        price = self.config.prices.get(fal_request.model, 0.0)
        self.ledger.record_charge(fal_request.key, model=fal_request.model, request_id=fal_request.id,
                                  images=len(images), megapixels=megapixels, usd=round(price * megapixels, 6))

    async def _output(self, params: FalInput, faults: Faults, latency: float) -> dict[str, Any]:
        seed = params.seed if params.seed is not None else self.dice.bits(64)
        ttl = self.media_ttl(faults, self.config.media_ttl)
        images, nsfw_flags = [], []
        for index in range(params.num_images):
            nsfw = self.dice.chance(faults.nsfw_rate)
            spec = ImageSpec(
                params.prompt,
                seed + index,
                params.width,
                params.height,
                params.output_format,
                blank=nsfw and params.enable_safety_checker,
            )
            data = await self.render(spec)
            if params.sync_mode:
                name = f"{new_uuid()}.{spec.extension}"
                url = f"data:{spec.content_type};base64,{base64.b64encode(data).decode()}"
            else:
                name = self.media.add(spec, len(data), ttl)
                url = f"{self.url}{self.media_prefix}/{name}"
            images.append(
                {
                    "url": url,
                    "width": spec.width,
                    "height": spec.height,
                    "content_type": spec.content_type,
                    "file_name": name,
                    "file_size": len(data),
                }
            )
            nsfw_flags.append(nsfw)
        return {
            "images": images,
            "timings": {"inference": round(latency, 4)},
            "seed": seed,
            "has_nsfw_concepts": nsfw_flags,
            "prompt": params.prompt,
        }

    def _fail(self, fal_request: FalRequest, status: int, headers: dict[str, str] | None = None) -> None:
        prompt = fal_request.params.prompt if fal_request.params else ""
        body = failure_body(status, prompt)
        if status == 422:
            self._complete(fal_request, 422, body, error="Invalid status code: 422")
            return
        message, error_type = FAILURES.get(status, FAILURES[500])
        extra = {"X-Fal-Error-Type": error_type, **(headers or {})}
        fal_request.log(message, "ERROR")
        self._complete(fal_request, status, body, headers=extra, error=message, error_type=error_type)

    def _complete(
        self,
        fal_request: FalRequest,
        status: int,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        faults = self.faults.for_model(fal_request.model)
        fal_request.state = COMPLETED
        fal_request.result_status, fal_request.result_body = status, body
        fal_request.result_headers = headers or {}
        fal_request.error, fal_request.error_type = error, error_type
        fal_request.expires_at = time.monotonic() + self._result_ttl(body, faults)
        self._notify()
        if fal_request.webhook_url:
            self._send_webhook(fal_request, faults)

    def _result_ttl(self, body: Any, faults: Faults) -> float:
        if faults.result_ttl is not None:
            return faults.result_ttl
        large = len(json.dumps(body)) >= self.config.large_result_bytes
        return self.config.large_result_ttl if large else self.config.result_ttl

    def _start_deadline(self, fal_request: FalRequest) -> None:
        if fal_request.state != IN_QUEUE or self._requests.get(fal_request.id) is not fal_request:
            return
        self._withdraw(fal_request)
        self._fail(fal_request, 504, headers={"X-Fal-Request-Timeout-Type": "user"})

    def _send_webhook(self, fal_request: FalRequest, faults: Faults) -> None:
        assert fal_request.webhook_url is not None
        if fal_request.result_status != 200:
            body = error_body(fal_request.id, fal_request.result_status, fal_request.result_body)
        elif self.dice.chance(faults.payload_error_rate):
            body = payload_error_body(fal_request.id)
        else:
            body = ok_body(fal_request.id, fal_request.result_body)
        flags = {
            "bad_signature": self.dice.chance(faults.webhook_bad_signature_rate),
            "stale": self.dice.chance(faults.webhook_stale_timestamp_rate),
            "unknown_key": self.dice.chance(faults.webhook_unknown_key_rate),
        }
        request_id, user_id = fal_request.id, self.config.user_id

        def headers() -> dict[str, str]:
            return self.signer.headers(request_id, user_id, body, **flags)

        ref = {
            "provider": "fal",
            "request_id": request_id,
            "result_status": fal_request.result_status,
            "forged": [name for name, on in flags.items() if on],
        }
        self.sender.send(Delivery(fal_request.webhook_url, body, ref, headers), faults)

    def _notify(self) -> None:
        # Wakes every SSE stream; each re-reads its request and sends only if the status body changed.
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()
