"""Random UUIDv4 strings without a system call per id (os.urandom is slow on some VMs)."""

from __future__ import annotations

import os
import random
import uuid

# Ids only need to be unique and unguessable enough for a local emulator, not cryptographically strong.
_rng = random.Random(os.urandom(32))


def new_uuid() -> str:
    """Return a random UUIDv4 string."""
    return str(uuid.UUID(int=_rng.getrandbits(128), version=4))
