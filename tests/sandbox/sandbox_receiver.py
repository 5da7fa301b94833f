"""A tiny real HTTP server on loopback that records webhook and upload calls (stdlib only)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orchestrator.netutil import free_port


@dataclass
class Call:
    """One received request."""

    method: str
    path: str  # raw request target, query string included
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """Records every call; answers with queued status codes first, then `default_status`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.statuses: deque[int] = deque()
        self.default_status = 200
        self.delay = 0.0
        self._lock = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Call]:
        """Block until at least `count` calls arrived; return all calls."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} calls, got {len(self.calls)}")
                self._lock.wait(left)
            return list(self.calls)

    def _record(self, call: Call) -> int:
        with self._lock:
            self.calls.append(call)
            self._lock.notify_all()
            return self.statuses.popleft() if self.statuses else self.default_status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                call = Call(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
                status = receiver._record(call)
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def verify_fal_signature(headers: dict[str, str], body: bytes, jwks: dict[str, object]) -> bool:
    """Check a fal webhook exactly as fal documents it, using only `cryptography` (not sandbox code)."""
    import base64
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    lower = {k.lower(): v for k, v in headers.items()}
    try:
        parts = [lower[f"x-fal-webhook-{name}"] for name in ("request-id", "user-id", "timestamp")]
        signature = bytes.fromhex(lower["x-fal-webhook-signature"])
    except (KeyError, ValueError):
        return False
    message = "\n".join([*parts, hashlib.sha256(body).hexdigest()]).encode()
    for jwk in jwks["keys"]:  # type: ignore[attr-defined]
        x = jwk["x"]
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        try:
            public.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
