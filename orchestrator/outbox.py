"""What a committed transaction owes: the consequences of its job transitions.

orchestrator.state records them while it applies transitions (a slot freed, a job due again,
results to store, a batch finished); whoever commits the session acts on them after the commit
(the workers' context refills and stores in the same thread; the API publishes broker nudges
through `queue.Publisher.watch`). A rollback drops them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from orchestrator.models import Asset, Job


@dataclass
class Outbox:
    """Consequences of this session's transitions, acted on once it commits (dropped on rollback).

    freed: providers whose in-flight count went down (a claim round should follow at once).
    due: provider -> seconds until a job re-queued in this transaction is due again.
    storing: jobs whose results arrived (their store step follows), each with the job and its
        images as the transaction saw them when it has them (so the store step reads nothing).
    finished: batches that took their final state (each owes a completion notice).
    """

    freed: set[str] = field(default_factory=set)
    due: dict[str, float] = field(default_factory=dict)
    storing: dict[uuid.UUID, tuple[Job, list[Asset]] | None] = field(default_factory=dict)
    finished: set[uuid.UUID] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.freed or self.due or self.storing or self.finished)

    def queued(self, provider: str, delay: float) -> None:
        """A job of `provider` is due again in `delay` seconds."""
        delay = max(0.0, delay)
        self.due[provider] = min(delay, self.due.get(provider, delay))


OUTBOX_KEY = "state_outbox"


def of(session: Session) -> Outbox:
    """This session's outbox (created on first use)."""
    box = session.info.get(OUTBOX_KEY)
    if box is None:
        box = session.info[OUTBOX_KEY] = Outbox()
    return box


def take(session: Session) -> Outbox:
    """The outbox of the transaction that just committed, forgotten by the session."""
    return session.info.pop(OUTBOX_KEY, None) or Outbox()


def drop(session: Session) -> None:
    """Forget the consequences of a transaction that rolled back."""
    session.info.pop(OUTBOX_KEY, None)
