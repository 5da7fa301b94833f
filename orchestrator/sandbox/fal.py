"""The fal queue sandbox: submit, status (+SSE), result, cancel, signed webhooks and a CDN path."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import re
import time
from collections import Counter, defaultdict
from typing import Any

from aiohttp import web

from orchestrator.sandbox import fal_http
from orchestrator.sandbox.config import FalConfig
from orchestrator.sandbox.fal_models import FAILURES, MODELS, FalInput, failure_body, validate
from orchestrator.sandbox.fal_queue import COMPLETED, IN_PROGRESS, IN_QUEUE, FalRequest, KeyQueue, app_path
from orchestrator.sandbox.fal_webhooks import WebhookSigner, error_body, ok_body, payload_error_body
from orchestrator.sandbox.faults import Faults
from orchestrator.sandbox.ids import new_uuid
from orchestrator.sandbox.images import ImageSpec
from orchestrator.sandbox.ledger import key_label
from orchestrator.sandbox.server import BaseSandbox
from orchestrator.sandbox.webhooks import Delivery

_REQUEST_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<tail>/status|/status/stream|/response)?$")
_CANCEL_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)/cancel$")


class FalSandbox(BaseSandbox):
    """Local emulator of fal's queue API for the four FLUX models."""

    provider = "fal"
    media_prefix = "/files"
    config: FalConfig

    def __init__(self, config: FalConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or FalConfig(), **overrides)
        self.signer = WebhookSigner()
        super().__init__(config)
        self._apps = {app_path(m) for m in config.models}
        self._requests: dict[str, FalRequest] = {}
        self._queues: defaultdict[str, KeyQueue] = defaultdict(KeyQueue)
        self._queued_by_model: Counter[str] = Counter()
        self._changed: asyncio.Event | None = None

    # -- public helpers ---------------------------------------------------------------------------------------

    @property
    def jwks_url(self) -> str:
        """Where the webhook verification keys are published."""
        return f"{self.url}/.well-known/jwks.json"

    def jwks(self) -> dict[str, Any]:
        """The JWKS document currently published."""
        return self.signer.jwks()

    def rotate_key(self, keep_old: bool = True) -> dict[str, str]:
        """Publish a new signing key and sign with it from now on; returns its JWK."""
        return self.signer.rotate(keep_old).jwk()

    def set_concurrency(self, limit: int) -> None:
        """Change the per-key running limit at run time."""
        self.config.concurrency = limit
        self.call(self._pump_all())

    def request_state(self, request_id: str) -> str | None:
        """Queue state of a request (IN_QUEUE / IN_PROGRESS / COMPLETED), None if unknown."""
        request = self._requests.get(request_id)
        return request.state if request else None

    def _busy(self) -> bool:
        return any(len(q) or q.running for q in self._queues.values())

    async def _pump_all(self) -> None:
        for key in list(self._queues):
            self._pump(key)

    # -- BaseSandbox hooks ----------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        for request in self._requests.values():
            if request.task is not None:
                request.task.cancel()
        self._requests = {}
        self._queues = defaultdict(KeyQueue)
        self._queued_by_model = Counter()

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/jwks.json", self._handle_jwks)
        app.router.add_post("/_sandbox/rotate-key", self._handle_rotate)
        app.router.add_get("/v1/models/pricing", self._handle_pricing)  # fal's Platform API (api.fal.ai)
        app.router.add_post("/{path:.+}", self._handle_submit)
        app.router.add_get("/{path:.+}", self._handle_get)
        app.router.add_put("/{path:.+}", self._handle_cancel)

    # -- submit -----------------------------------------------------------------------------------------------

    async def _handle_submit(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["path"].strip("/")
        key = fal_http.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        if endpoint not in self.config.models:
            return fal_http.detail(404, f"Application '{endpoint}' not found")
        faults = self.faults.for_model(endpoint)
        hanging = await self.submit_stall(request, faults)
        if hanging and not faults.submit_timeout_accepts:
            self._record_submit(endpoint, key, None, None, outcome="timeout")
            await self.lose_answer(request, faults)
        injected = None if hanging else self.roll_submit_error(faults, (429, 500, 502, 503, 504))
        if injected is not None:
            self._record_submit(endpoint, key, None, None, outcome="rejected", http_status=injected)
            return fal_http.injected_error(injected, faults, self.dice)
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"detail": [fal_http.json_invalid()]}, status=422)
        rejection = self._check_queue_length(request, endpoint)
        if rejection is not None:
            self._record_submit(endpoint, key, payload, None, outcome="rejected", http_status=429)
            return rejection
        priority = request.headers.get("X-Fal-Queue-Priority", "normal").strip().lower()
        if priority not in ("normal", "low"):
            return fal_http.detail(400, "X-Fal-Queue-Priority must be 'normal' or 'low'")
        fal_request, position = self._enqueue(endpoint, key, payload, request, priority)
        lost = {"answer_lost": True} if hanging else {}
        self._record_submit(endpoint, key, payload, fal_request, outcome="accepted", http_status=200, **lost)
        if hanging:
            await self.lose_answer(request, faults)
        if faults.submit_answer_delay_seconds > 0:
            await asyncio.sleep(faults.submit_answer_delay_seconds)
        body = {
            **self._urls(fal_request),
            "status": IN_QUEUE,
            "request_id": fal_request.id,
            "gateway_request_id": fal_request.id,
            "queue_position": position,
        }
        return web.json_response(body, headers={"x-fal-request-id": fal_request.id})

    def _check_queue_length(self, request: web.Request, endpoint: str) -> web.Response | None:
        raw = request.query.get("fal_max_queue_length")
        if raw is None:
            return None
        try:
            limit = int(raw)
        except ValueError:
            return fal_http.detail(422, "fal_max_queue_length must be an integer")
        # The queue never grows beyond `limit` waiting requests across all callers of the endpoint.
        if self._queued_by_model[endpoint] >= limit:
            return fal_http.detail(
                429, f"Queue of {endpoint} is full (fal_max_queue_length={limit})", error_type="queue_full"
            )
        return None

    def _enqueue(
        self, endpoint: str, key: str, payload: Any, request: web.Request, priority: str
    ) -> tuple[FalRequest, int]:
        checked = validate(MODELS[endpoint], payload, self.config.max_image_side, self.config.max_num_images)
        fal_request = FalRequest(
            id=new_uuid(),
            model=endpoint,
            key=key,
            params=checked if isinstance(checked, FalInput) else None,
            invalid=None if isinstance(checked, FalInput) else checked,
            webhook_url=request.query.get("fal_webhook"),
            priority=priority,
        )
        self._requests[fal_request.id] = fal_request
        self._queues[key].push(fal_request)
        self._queued_by_model[endpoint] += 1
        position = self._queues[key].position(fal_request)
        timeout = fal_http.start_timeout(request)
        if timeout is not None:
            asyncio.get_running_loop().call_later(timeout, self._start_deadline, fal_request)
        self._pump(key)
        return fal_request, position

    def _record_submit(
        self, endpoint: str, key: str, payload: Any, fal_request: FalRequest | None, **outcome: Any
    ) -> None:
        self.ledger.record_submission(
            provider="fal",
            model=endpoint,
            key=key_label(key),
            input=payload,
            request_id=fal_request.id if fal_request else None,
            priority=fal_request.priority if fal_request else None,
            webhook_url=fal_request.webhook_url if fal_request else None,
            **outcome,
        )

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
            fal_request.task = asyncio.get_running_loop().create_task(self._run_request(fal_request, queue))
            started = True
        if started:
            self._notify()

    async def _run_request(self, fal_request: FalRequest, queue: KeyQueue) -> None:
        try:
            await self._execute(fal_request)
        except asyncio.CancelledError:
            if not fal_request.cancel_requested:
                raise
            self._fail(fal_request, 499)
        finally:
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
        self._queues[fal_request.key].remove(fal_request)
        self._queued_by_model[fal_request.model] -= 1
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

    # -- status, result, stream, cancel ------------------------------------------------------------------------

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        match = _REQUEST_PATH.match(request.match_info["path"].strip("/"))
        if match is None or match["app"] not in self._apps:
            return fal_http.detail(404, "Not Found")
        key = fal_http.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        fal_request = self._lookup(match["app"], match["id"], key)
        if fal_request is None:
            return fal_http.detail(404, f"Request {match['id']} not found")
        if self.dice.chance(self.faults.for_model(fal_request.model).poll_500_rate):
            return fal_http.ingress_error(503)
        tail = match["tail"] or ""
        if tail.startswith("/status"):
            with_logs = fal_http.parse_logs(request.query.get("logs"))
            if with_logs is None:
                return fal_http.detail(422, "logs must be one of 1, 0, true, false")
            if tail == "/status/stream":
                return await self._stream(request, fal_request, with_logs)
            code = 200 if fal_request.state == COMPLETED else 202
            return web.json_response(self._status_body(fal_request, with_logs), status=code)
        return self._result(fal_request)

    def _lookup(self, app: str, request_id: str, key: str) -> FalRequest | None:
        fal_request = self._requests.get(request_id)
        if fal_request is None or fal_request.app != app or fal_request.key != key:
            return None
        if fal_request.expired():
            del self._requests[request_id]
            return None
        return fal_request

    def _status_body(self, fal_request: FalRequest, with_logs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"status": fal_request.state, "request_id": fal_request.id, **self._urls(fal_request)}
        if fal_request.state == IN_QUEUE:
            body["queue_position"] = self._queues[fal_request.key].position(fal_request)
            return body
        body["logs"] = list(fal_request.logs) if with_logs else None
        if fal_request.state == COMPLETED:
            body["metrics"] = fal_request.metrics
            if fal_request.error is not None:
                body["error"], body["error_type"] = fal_request.error, fal_request.error_type
        return body

    def _result(self, fal_request: FalRequest) -> web.Response:
        if fal_request.state != COMPLETED:
            return fal_http.detail(self.config.result_pending_status, "Request is still in progress")
        headers = {"x-fal-request-id": fal_request.id, **fal_request.result_headers}
        return web.json_response(fal_request.result_body, status=fal_request.result_status, headers=headers)

    async def _stream(self, request: web.Request, fal_request: FalRequest, with_logs: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        last = ""
        while True:
            encoded = json.dumps(self._status_body(fal_request, with_logs))
            if encoded != last:
                await response.write(f"data: {encoded}\n\n".encode())
                last = encoded
            if fal_request.state == COMPLETED:
                break
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), self.config.keepalive_interval)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
        await response.write_eof()
        return response

    async def _handle_cancel(self, request: web.Request) -> web.Response:
        match = _CANCEL_PATH.match(request.match_info["path"].strip("/"))
        if match is None or match["app"] not in self._apps:
            return fal_http.detail(404, "Not Found")
        key = fal_http.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        fal_request = self._lookup(match["app"], match["id"], key)
        if fal_request is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if fal_request.state == COMPLETED:
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        fal_request.cancel_requested = True
        if fal_request.state == IN_QUEUE:
            # A waiting request is taken out of the queue and never runs.
            self._queues[key].remove(fal_request)
            self._queued_by_model[fal_request.model] -= 1
            self._fail(fal_request, 499)
            if self.config.cancel_queued_status == 200:
                return web.json_response({"status": "OK"})
        elif fal_request.task is not None:
            fal_request.task.cancel()
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    # -- keys -----------------------------------------------------------------------------------------------

    async def _handle_pricing(self, request: web.Request) -> web.Response:
        # GET /v1/models/pricing?endpoint_id=a&endpoint_id=b, with the account's key: unit prices
        # in USD; the FLUX image endpoints quote the price of one output megapixel.
        key = fal_http.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        wanted = request.query.getall("endpoint_id", [])
        if not wanted:
            return fal_http.detail(422, "endpoint_id is required")
        prices = [{"endpoint_id": e, "unit_price": self.config.prices[e], "unit": "megapixels", "currency": "USD"}
                  for e in wanted if e in self.config.prices]
        return web.json_response({"prices": prices, "next_cursor": None, "has_more": False})

    async def _handle_jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.signer.jwks(), headers={"Cache-Control": "max-age=3600"})

    async def _handle_rotate(self, request: web.Request) -> web.Response:
        keep_old = request.query.get("keep_old", "true").lower() not in ("0", "false")
        return web.json_response(self.signer.rotate(keep_old).jwk())
