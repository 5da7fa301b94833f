"""The fal queue sandbox: submit, status (+SSE), result, cancel, signed webhooks and a CDN path.

`FalRunner` (runner.py) holds the queues and runs the requests; this module is the HTTP surface.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from orchestrator.sandbox.common.ledger import key_label
from orchestrator.sandbox.fal import wire
from orchestrator.sandbox.fal.config import FalConfig
from orchestrator.sandbox.fal.queue import COMPLETED, IN_QUEUE, FalRequest
from orchestrator.sandbox.fal.runner import FalRunner

_REQUEST_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<tail>/status|/status/stream|/response)?$")
_CANCEL_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)/cancel$")


class FalSandbox(FalRunner):
    """Local emulator of fal's queue API for the four FLUX models."""

    def __init__(self, config: FalConfig | None = None, **overrides: Any) -> None:
        super().__init__(dataclasses.replace(config or FalConfig(), **overrides))

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

    # -- routes -----------------------------------------------------------------------------------------------

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
        key = wire.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        if endpoint not in self.config.models:
            return wire.detail(404, f"Application '{endpoint}' not found")
        faults = self.faults.for_model(endpoint)
        hanging = await self.submit_stall(request, faults)
        if hanging and not faults.submit_timeout_accepts:
            self._record_submit(endpoint, key, None, None, outcome="timeout")
            await self.lose_answer(request, faults)
        injected = None if hanging else self.roll_submit_error(faults, (429, 500, 502, 503, 504))
        if injected is not None:
            self._record_submit(endpoint, key, None, None, outcome="rejected", http_status=injected)
            return wire.injected_error(injected, faults, self.dice)
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"detail": [wire.json_invalid()]}, status=422)
        rejection = self._check_queue_length(request, endpoint)
        if rejection is not None:
            self._record_submit(endpoint, key, payload, None, outcome="rejected", http_status=429)
            return rejection
        priority = request.headers.get("X-Fal-Queue-Priority", "normal").strip().lower()
        if priority not in ("normal", "low"):
            return wire.detail(400, "X-Fal-Queue-Priority must be 'normal' or 'low'")
        fal_request, position = self._enqueue(
            endpoint, key, payload, request.query.get("fal_webhook"), priority, wire.start_timeout(request)
        )
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
            return wire.detail(422, "fal_max_queue_length must be an integer")
        # The queue never grows beyond `limit` waiting requests across all callers of the endpoint.
        if self._queued_by_model[endpoint] >= limit:
            return wire.detail(
                429, f"Queue of {endpoint} is full (fal_max_queue_length={limit})", error_type="queue_full"
            )
        return None

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

    # -- status, result, stream, cancel ------------------------------------------------------------------------

    def _addressed(
        self, request: web.Request, path: re.Pattern[str], unknown: Callable[[re.Match[str]], web.Response]
    ) -> web.Response | tuple[re.Match[str], FalRequest]:
        """Match `path`, authenticate and find the caller's request; else the 404/401 or `unknown(match)` answer."""
        match = path.match(request.match_info["path"].strip("/"))
        if match is None or match["app"] not in self._apps:
            return wire.detail(404, "Not Found")
        key = wire.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        fal_request = self._lookup(match["app"], match["id"], key)
        return unknown(match) if fal_request is None else (match, fal_request)

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        addressed = self._addressed(request, _REQUEST_PATH, lambda m: wire.detail(404, f"Request {m['id']} not found"))
        if isinstance(addressed, web.Response):
            return addressed
        match, fal_request = addressed
        if self.dice.chance(self.faults.for_model(fal_request.model).poll_500_rate):
            return wire.ingress_error(503)
        tail = match["tail"] or ""
        if tail.startswith("/status"):
            with_logs = wire.parse_logs(request.query.get("logs"))
            if with_logs is None:
                return wire.detail(422, "logs must be one of 1, 0, true, false")
            if tail == "/status/stream":
                return await self._stream(request, fal_request, with_logs)
            code = 200 if fal_request.state == COMPLETED else 202
            return web.json_response(self._status_body(fal_request, with_logs), status=code)
        return self._result(fal_request)

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
            return wire.detail(self.config.result_pending_status, "Request is still in progress")
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
        addressed = self._addressed(request, _CANCEL_PATH, _cancel_unknown)
        if isinstance(addressed, web.Response):
            return addressed
        fal_request = addressed[1]
        if fal_request.state == COMPLETED:
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        fal_request.cancel_requested = True
        if fal_request.state == IN_QUEUE:
            # A waiting request is taken out of the queue and never runs.
            self._withdraw(fal_request)
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
        key = wire.authenticate(request, self.config.keys)
        if isinstance(key, web.Response):
            return key
        wanted = request.query.getall("endpoint_id", [])
        if not wanted:
            return wire.detail(422, "endpoint_id is required")
        prices = [{"endpoint_id": e, "unit_price": self.config.prices[e], "unit": "megapixels", "currency": "USD"}
                  for e in wanted if e in self.config.prices]
        return web.json_response({"prices": prices, "next_cursor": None, "has_more": False})

    async def _handle_jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.signer.jwks(), headers={"Cache-Control": "max-age=3600"})

    async def _handle_rotate(self, request: web.Request) -> web.Response:
        keep_old = request.query.get("keep_old", "true").lower() not in ("0", "false")
        return web.json_response(self.signer.rotate(keep_old).jwk())


def _cancel_unknown(match: re.Match[str]) -> web.Response:
    return web.json_response({"status": "NOT_FOUND"}, status=404)
