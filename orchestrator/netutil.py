"""Small network helpers shared by commands, sandboxes and tests."""

from __future__ import annotations

import random
import socket

# Ports at or above 32768 fall in Linux's ephemeral range, where outgoing connections
# take their source ports; servers we start stay below it to avoid collisions.
PORT_RANGE = (20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port below 32768 that is free to bind on `host` right now."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now, binding the way our servers do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like werkzeug and aiohttp: connections left in TIME_WAIT by a server that
        # just stopped do not block a restart on the same port, so they must not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
