"""Real HTTP servers on loopback for the tests: a recording stub server and a WSGI app server.

`LoopbackServer` is a threaded stdlib server on 127.0.0.1 and a free port that logs every request
and answers with a settable status (queued statuses first), or with whatever its `respond` function
returns. `WsgiServer` runs a Flask/WSGI app on a real threaded server. Both start listening at once
and stop on `close()` (or at the end of a `with` block).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, make_server

from orchestrator.netutil import free_port


@dataclass
class Call:
    """One received request."""

    method: str
    path: str  # raw request target, query string included
    headers: dict[str, str]  # as sent (original case)
    body: bytes
    at: float  # time.monotonic() on arrival

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Answer:
    """What the server sends back."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Respond = Callable[[Call], Answer]


class _Stoppable:
    """Start/stop plumbing shared by both servers: a serving thread, `url`, `close`, `with`."""

    _server: ThreadingHTTPServer | BaseWSGIServer
    _thread: threading.Thread
    path = ""

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>` (what an allow-list of hosts names)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL to hand out: the base URL (no trailing slash) plus the server's `path`, if any."""
        return f"http://{self.host}{self.path}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class LoopbackServer(_Stoppable):
    """Logs every request in `calls`; answers `respond(call)` if given, else the next queued
    status from `statuses`, then `status`, with `body` and `headers`; each answer waits `delay` s.
    It answers on every path; `path` is only appended to `url`."""

    def __init__(self, respond: Respond | None = None, *, status: int = 200, body: bytes = b"",
                 headers: Mapping[str, str] | None = None, delay: float = 0.0, path: str = "") -> None:
        self.path = path
        self.calls: list[Call] = []
        self.statuses: deque[int] = deque()
        self.status, self.body, self.headers, self.delay = status, body, dict(headers or {}), delay
        self._respond = respond or self._next_answer
        self._arrived = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def answer(self, call: Call) -> Answer:
        """Log `call` and decide the answer (called by the handler thread)."""
        with self._arrived:  # logged and answered in arrival order
            self.calls.append(call)
            self._arrived.notify_all()
            answer = self._respond(call)
        if self.delay:
            time.sleep(self.delay)
        return answer

    def _next_answer(self, _call: Call) -> Answer:
        return Answer(self.statuses.popleft() if self.statuses else self.status, self.body, self.headers)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Call]:
        """Block until at least `count` requests arrived; return all of them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} calls, got {len(self.calls)}")
                self._arrived.wait(left)
            return list(self.calls)


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = server.answer(Call(self.command, self.path, dict(self.headers.items()), body,
                                           time.monotonic()))
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class WsgiServer(_Stoppable):
    """A WSGI app (Flask) on a real threaded HTTP server on loopback."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self._server = make_server("127.0.0.1", port or free_port(), app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
