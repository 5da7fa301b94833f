"""What a sandbox saw and did: submissions, charges, in-flight counts per key, webhook and upload attempts,
and every GET of a generated file."""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import Counter
from typing import Any


def key_label(key: str) -> str:
    """Return a non-secret label for an API key: fal's public key id, else a short hash."""
    if ":" in key:
        return key.split(":", 1)[0]
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Ledger:
    """Thread-safe record; the server loop writes, tests and the admin endpoint read snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self._submissions: list[dict[str, Any]] = []
            self._deliveries: list[dict[str, Any]] = []
            self._charges: list[dict[str, Any]] = []
            self._media: list[dict[str, Any]] = []
            self._inflight: Counter[str] = Counter()
            self._peak: Counter[str] = Counter()

    def record_submission(self, **entry: Any) -> None:
        """Append one received submission (accepted or rejected)."""
        entry.setdefault("time", time.time())
        with self._lock:
            self._submissions.append(entry)

    def record_delivery(self, **entry: Any) -> None:
        """Append one outbound webhook or upload attempt and its outcome."""
        entry.setdefault("time", time.time())
        with self._lock:
            self._deliveries.append(entry)

    def record_media_get(self, name: str, status: int) -> None:
        """Append one GET of a generated file (so a test can tell whether anyone downloaded it)."""
        with self._lock:
            self._media.append({"name": name, "status": status, "time": time.time()})

    @property
    def media_gets(self) -> list[dict[str, Any]]:
        """Copies of every file GET so far."""
        with self._lock:
            return copy.deepcopy(self._media)

    def record_charge(self, key: str, **entry: Any) -> None:
        """Bill `key` for generated output (model, request, images, megapixels, usd)."""
        entry.setdefault("time", time.time())
        with self._lock:
            self._charges.append({"key": key_label(key), **entry})

    @property
    def charges(self) -> list[dict[str, Any]]:
        """Copies of every charge so far."""
        with self._lock:
            return copy.deepcopy(self._charges)

    def charged(self, key: str | None = None) -> float:
        """Total USD billed (to `key`, or to everyone), rounded to millionths."""
        label = key_label(key) if key is not None else None
        with self._lock:
            return round(sum(c["usd"] for c in self._charges if label is None or c["key"] == label), 6)

    def started(self, key: str) -> None:
        """Count one more in-flight request for `key` and update its peak."""
        label = key_label(key)
        with self._lock:
            self._inflight[label] += 1
            self._peak[label] = max(self._peak[label], self._inflight[label])

    def finished(self, key: str) -> None:
        """Count one in-flight request of `key` as done."""
        with self._lock:
            self._inflight[key_label(key)] -= 1

    @property
    def submissions(self) -> list[dict[str, Any]]:
        """Copies of every submission so far."""
        with self._lock:
            return copy.deepcopy(self._submissions)

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Copies of every outbound attempt so far."""
        with self._lock:
            return copy.deepcopy(self._deliveries)

    def webhooks(self) -> list[dict[str, Any]]:
        """Webhook attempts only (no uploads)."""
        return [d for d in self.deliveries if d["kind"] == "webhook"]

    def peak_inflight(self, key: str | None = None) -> int:
        """Highest concurrent in-flight count of `key` (or of any key)."""
        with self._lock:
            if key is None:
                return max(self._peak.values(), default=0)
            return self._peak[key_label(key)]

    def inflight(self, key: str | None = None) -> int:
        """Current in-flight count of `key` (or of all keys)."""
        with self._lock:
            if key is None:
                return sum(self._inflight.values())
            return self._inflight[key_label(key)]

    def snapshot(self) -> dict[str, Any]:
        """Return the whole ledger as JSON-serialisable data."""
        with self._lock:
            return {
                "submissions": copy.deepcopy(self._submissions),
                "deliveries": copy.deepcopy(self._deliveries),
                "charges": copy.deepcopy(self._charges),
                "media_gets": copy.deepcopy(self._media),
                "inflight": dict(self._inflight),
                "peak_inflight": dict(self._peak),
            }
