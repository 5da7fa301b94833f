"""A load generator in processes of its own, so that it is never what limits the server it measures.

    fire(base_url, requests, concurrency, clients) -> Load

The parent builds every request's bytes (method, path, headers, body: already signed) before the
clock starts, writes a share of them per client to a file, and starts `clients` processes of this module.
Each one loads its share, says `ready`, waits for `go` on stdin, then keeps its share of the
`concurrency` keep-alive connections busy with plain asyncio streams (no HTTP library: an
HTTP/1.1 request is written as is and the answer read by its Content-Length), and writes back
each request's status and latency and its own CPU seconds. Shares are contiguous runs of the
list, so requests that are meant to go back to back (a webhook and its copy) stay together.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    """What one load run measured."""

    statuses: list[int]
    latencies: list[float]  # seconds per request
    seconds: float  # wall time from `go` to the last client finishing
    client_cpu: float  # CPU seconds of every client process over the run


def http_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one keep-alive HTTP/1.1 POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _shares(items: Sequence[bytes], parts: int) -> Iterator[list[bytes]]:
    n = len(items)
    for i in range(parts):
        yield list(items[i * n // parts:(i + 1) * n // parts])


def fire(base_url: str, requests: Sequence[bytes], concurrency: int, clients: int) -> Load:
    """Send every request with `concurrency` in flight, from `clients` processes."""
    url = urlsplit(base_url)
    clients = max(1, min(clients, concurrency, len(requests)))
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, share in enumerate(_shares(requests, clients)):
            path = Path(tmp) / f"share{i}.bin"
            path.write_bytes(b"".join(struct.pack("!I", len(r)) + r for r in share))
            conns = concurrency * (i + 1) // clients - concurrency * i // clients
            procs.append(subprocess.Popen([sys.executable, __file__, url.hostname or "127.0.0.1", str(url.port),
                                           str(conns), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for proc in procs:  # every client has its requests in memory before the clock starts
            if proc.stdout is None or proc.stdout.readline().strip() != b"ready":
                raise SystemExit("a load client did not start")
        start = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate()[0]) for proc in procs]
        seconds = time.perf_counter() - start
    return Load([s for r in results for s in r["statuses"]], [v for r in results for v in r["latencies"]],
                seconds, sum(r["cpu"] for r in results))


# --- the client process --------------------------------------------------------------------

async def _connection(host: str, port: int, queue: Iterator[bytes], out: list[tuple[int, float]]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in queue:  # a shared iterator: each request is sent once
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            out.append((status, time.perf_counter() - start))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _run(host: str, port: int, connections: int, requests: list[bytes]) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    queue = iter(requests)
    await asyncio.gather(*(_connection(host, port, queue, out) for _ in range(connections)))
    return out


def main(host: str, port: str, connections: str, path: str) -> None:
    """Client process: load the share, wait for `go`, send, report."""
    data, requests, at = Path(path).read_bytes(), [], 0
    while at < len(data):  # length-prefixed requests, as fire() wrote them
        (size,) = struct.unpack_from("!I", data, at)
        requests.append(data[at + 4:at + 4 + size])
        at += 4 + size
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    results = asyncio.run(_run(host, int(port), int(connections), requests))
    json.dump({"statuses": [s for s, _ in results], "latencies": [v for _, v in results],
               "cpu": time.process_time() - cpu0}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
