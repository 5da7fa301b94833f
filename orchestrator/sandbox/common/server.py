"""Run a sandbox's aiohttp app on its own event loop in a background thread, plus the admin endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from orchestrator.netutil import free_port
from orchestrator.sandbox.common.config import ServerConfig
from orchestrator.sandbox.common.faults import Dice, Faults
from orchestrator.sandbox.common.images import ImageSpec, MediaStore, render
from orchestrator.sandbox.common.ledger import Ledger
from orchestrator.sandbox.common.webhooks import RetryPolicy, WebhookSender

log = logging.getLogger(__name__)
T = TypeVar("T")


class BaseSandbox:
    """Shared life cycle: start/stop in a thread, faults, ledger, media store and webhook sender."""

    provider = "base"
    media_prefix = "/files"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.ledger = Ledger()
        self.dice = Dice(config.seed)
        self.media = MediaStore()
        self._startup_faults = config.faults
        self._faults = config.faults
        self._submit_faults_used = 0
        self.closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._executor = ThreadPoolExecutor(config.render_threads, thread_name_prefix=f"{self.provider}-render")
        self.port: int | None = None
        self.sender = WebhookSender(self.ledger, self.dice, self._retry_policy(), config.webhook_max_connections)

    # -- life cycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Public base URL, without a trailing slash."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        if self.port is None:
            raise RuntimeError("sandbox not started")
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> BaseSandbox:
        """Bind the port and serve in a background thread; returns once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("sandbox already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name=f"{self.provider}-sandbox", daemon=True
        )
        self._thread.start()
        ready.wait(30)
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{self.provider} sandbox failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving, cancel pending work and join the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> BaseSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            ready.set()
            loop.close()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _serve(self) -> None:
        app = self._make_app()
        # handler_cancellation: a client that hangs up (timeout, closed SSE stream) cancels its handler.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        await self.sender.open()
        for attempt in range(10):
            port = self.config.port or free_port(self.config.host)
            site = web.TCPSite(runner, self.config.host, port, backlog=1024)
            try:
                await site.start()
            except OSError:
                if self.config.port or attempt == 9:
                    raise
                continue
            self.port = port
            log.info("%s sandbox listening on %s", self.provider, self.url)
            return

    async def _shutdown(self) -> None:
        self.closing = True
        if self._runner is not None:
            await self._runner.cleanup()
        await self.sender.close()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background on the sandbox loop (call from the loop)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no request is pending and no webhook or upload is outstanding."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.call(self._async_busy()):
                return True
            time.sleep(0.01)
        return False

    async def _async_busy(self) -> bool:
        return self.sender.pending > 0 or bool(self._background) or self._busy()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the sandbox's loop from another thread and return its result."""
        if self._loop is None:
            raise RuntimeError("sandbox not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- faults and reset -----------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The fault settings in force."""
        return self._faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fault knobs at run time; returns the new settings."""
        self._faults = self._faults.with_changes(changes)
        self._submit_faults_used = 0
        return self._faults

    def replace_faults(self, faults: Faults) -> None:
        """Replace every fault knob at once."""
        self._faults = faults
        self._submit_faults_used = 0

    def reset(self) -> None:
        """Forget all requests, files and ledger entries, and restore the start-up faults."""
        if self._loop is not None:
            self.call(self._async_reset())
        else:
            self._reset_now()

    async def _async_reset(self) -> None:
        self._reset_now()

    def _reset_now(self) -> None:
        self._reset_state()
        self.media.clear()
        self.ledger.reset()
        self.replace_faults(self._startup_faults)

    def roll_submit_error(self, faults: Faults, statuses: tuple[int, ...]) -> int | None:
        """Decide whether this submit gets an injected error status, honouring the fault budget."""
        budget = faults.submit_fault_budget
        if budget is not None and self._submit_faults_used >= budget:
            return None
        rates = [(s, getattr(faults, f"submit_{s}_rate")) for s in statuses]
        status = self.dice.pick_status(rates)
        if status is not None:
            self._submit_faults_used += 1
        return status

    async def submit_stall(self, request: web.Request, faults: Faults) -> bool:
        """Apply the slow-submit fault; True means this submit's answer will be lost (see `lose_answer`).

        With `submit_timeout_accepts` the caller takes the task first and only then holds the
        answer back: like the real services, the sandbox knows an accepted task (status,
        getResponse) while the client is still waiting for an answer that never comes.
        """
        if self.dice.chance(faults.submit_slow_rate):
            await asyncio.sleep(faults.submit_slow_seconds)
        return self.dice.chance(faults.submit_timeout_rate)

    async def lose_answer(self, request: web.Request, faults: Faults) -> NoReturn:
        """Hold the submit for `submit_timeout_seconds`, then drop the connection without an answer."""
        await asyncio.sleep(faults.submit_timeout_seconds)
        hang_up(request)

    # -- media ---------------------------------------------------------------------------------------------

    async def render(self, spec: ImageSpec) -> bytes:
        """Render an image off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, render, spec)

    def media_ttl(self, faults: Faults, normal: float) -> float:
        """Retention of a new file: the early-expiry fault if set, else `normal`."""
        return normal if faults.media_ttl is None else faults.media_ttl

    async def _serve_media(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        stored = self.media.get(name)
        self.ledger.record_media_get(name, 404 if stored is None else 200)
        if stored is None:
            return web.Response(status=404, text="Not Found")
        data = await self.render(stored.spec)
        return web.Response(body=data, content_type=stored.spec.content_type)

    # -- app ----------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/_sandbox/health", self._admin_health)
        app.router.add_get("/_sandbox/faults", self._admin_get_faults)
        app.router.add_put("/_sandbox/faults", self._admin_put_faults)
        app.router.add_get("/_sandbox/ledger", self._admin_ledger)
        app.router.add_post("/_sandbox/reset", self._admin_reset)
        app.router.add_get(self.media_prefix + "/{name}", self._serve_media)
        self._add_routes(app)
        return app

    async def _admin_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "provider": self.provider, "time": time.time()})

    async def _admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def _admin_put_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object of fault names to values")
            if request.query.get("replace", "").lower() in ("1", "true"):
                self.replace_faults(Faults().with_changes(changes))
            else:
                self.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"detail": str(exc)}, status=400)
        return web.json_response(self.faults.to_dict())

    async def _admin_ledger(self, request: web.Request) -> web.Response:
        return web.json_response(self.ledger.snapshot(), dumps=_dumps)

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self._reset_now()
        return web.json_response({"ok": True})

    # -- provider hooks -------------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _reset_state(self) -> None:
        raise NotImplementedError

    def _retry_policy(self) -> RetryPolicy:
        c = self.config
        return RetryPolicy(
            c.webhook_retries, c.webhook_backoff, c.webhook_backoff_max, c.webhook_jitter, c.webhook_timeout
        )

    def _busy(self) -> bool:
        raise NotImplementedError


def hang_up(request: web.Request) -> NoReturn:
    """Close the connection without an answer (what a client sees as a timeout or a lost response)."""
    if request.transport is not None:
        request.transport.close()
    raise web.HTTPException()


def retry_after(faults: Faults) -> str:
    """Retry-After header value (fractional when tests shrink it)."""
    return f"{faults.retry_after:g}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
