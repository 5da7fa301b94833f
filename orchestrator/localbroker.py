"""The embedded default's broker: Kombu's filesystem transport, made safe for many processes.

Kombu's own version creates a message file and then writes it, so a consumer polling at that
moment reads an empty file and the worker dies on the JSON error; and it moves claimed files
to the system temp dir, which is a copy (not an atomic rename) when that is another
filesystem. Here a message is written under a temporary name and renamed into place, and a
consumer claims one by renaming it inside the same directory, which only one process can win.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    """Atomic put and claim."""

    # Kombu's own filesystem.Channel renames AbstractChannel._put's `message`, so no name satisfies both.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        temp = os.path.join(self.data_folder_out, f".{name}.tmp")
        with open(temp, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))
        os.replace(temp, os.path.join(self.data_folder_out, name))

    def _get(self, queue: str, timeout: Any = None) -> Any:
        suffix = f".{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or not name.endswith(suffix) or name.partition(".")[2] != f"{queue}.msg":
                continue
            claimed = os.path.join(self.data_folder_in, f".{name}.{os.getpid()}.claimed")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer won it
            with open(claimed, "rb") as handle:
                payload = handle.read()
            os.remove(claimed)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _size(self, queue: str) -> int:
        suffix = f".{queue}.msg"
        return sum(1 for n in os.listdir(self.data_folder_in) if not n.startswith(".") and n.endswith(suffix))


class Transport(filesystem.Transport):
    """Kombu transport using the atomic channel."""

    Channel = Channel
