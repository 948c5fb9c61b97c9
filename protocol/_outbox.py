"""The owner's delivery outbox: one sans-IO machine per shard slot.

A slot is one sealed shard for one custodian (keyset, epoch, index,
custodian). The node keeps the slot's durable state in SQLite (pending,
delivered, refused, moved); SENT lives only while a delivery is in flight, so a
crash there leaves the slot pending and it is sent again (the custodian
answers "already-held" for the same sealed bytes).

States, and the only moves allowed between them (:data:`OUTBOX_MOVES`)::

    PENDING --due (Tick at or after the slot's due time)--> SENT
    SENT    --a verified receipt: stored / already-held---> DELIVERED (final)
    SENT    --a verified receipt: refused-----------------> REFUSED   (final)
    SENT    --failed (unreachable, timeout, bad receipt)---> PENDING, due after a back-off
    PENDING --the custodian is back (new addresses)-------> PENDING, due now
    SENT    --the custodian is back----------------------> SENT; if that send fails, due now
    PENDING --overdue (not delivered by its deadline)-----> MOVED     (final: re-placed)

An overdue slot that is in flight waits for its outcome; the node feeds
Overdue again if it fails. MOVED asks the node to re-place the shard
(:class:`Replace`); if it cannot, the node keeps the slot pending in its store
and makes a new machine for it.

The back-off starts at BACKOFF_MIN seconds and doubles up to BACKOFF_MAX. An
event that fits none of these raises :class:`IllegalOutboxMove`; any event
after a final state raises :class:`SlotFinished`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._errors import ShardnetError

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: Seconds a slot may stay undelivered before the owner re-places its shard (the default
#: of ``key import --deliver-within``).
DELIVER_WITHIN = 3600


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    REFUSED = "refused"
    MOVED = "moved"


_O = OutboxState
OUTBOX_MOVES: dict[OutboxState, frozenset[OutboxState]] = {
    _O.PENDING: frozenset({_O.SENT, _O.MOVED}),
    _O.SENT: frozenset({_O.DELIVERED, _O.REFUSED, _O.PENDING}),
    _O.DELIVERED: frozenset(),
    _O.REFUSED: frozenset(),
    _O.MOVED: frozenset(),
}
FINAL = frozenset({_O.DELIVERED, _O.REFUSED, _O.MOVED})


class SlotFinished(ShardnetError):
    """An event reached a slot that is already delivered, refused or moved."""


class IllegalOutboxMove(ShardnetError):
    def __init__(self, state: OutboxState, event: object) -> None:
        super().__init__(f"outbox slot: {type(event).__name__} is not allowed while {state}")
        self.state, self.event = state, event


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed; a pending slot whose time has come is sent."""


@dataclass(frozen=True)
class Receipted:
    """The custodian's receipt, already verified against what was sent."""

    status: str  # "stored" | "already-held" | "refused"
    reason: str = ""


@dataclass(frozen=True)
class SendFailed:
    error: str


@dataclass(frozen=True)
class PeerBack:
    """The custodian published new addresses (it restarted): try again now."""


@dataclass(frozen=True)
class Overdue:
    """The slot's deadline to be delivered has passed."""


Event = Tick | Receipted | SendFailed | PeerBack | Overdue


# -- effects -----------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Deliver the slot's shard now and feed back the outcome."""


@dataclass(frozen=True)
class Record:
    """Write the slot's durable state: delivered (with the receipt), refused
    (with the reason) or still pending after a failed attempt (with the error)."""

    state: OutboxState
    detail: str = ""


@dataclass(frozen=True)
class WakeAt:
    time: float


@dataclass(frozen=True)
class Replace:
    """Re-place the shard on another custodian, and finish this slot as moved."""


Effect = Send | Record | WakeAt | Replace


class OutboxSlot:
    def __init__(self, *, now: float) -> None:
        self.state = OutboxState.PENDING
        self.due = now
        self.delay = 0.0
        self.attempts = 0
        self._back = False  # the custodian came back while a send was in flight

    def _move(self, new: OutboxState, event: object) -> None:
        if new not in OUTBOX_MOVES[self.state]:
            raise IllegalOutboxMove(self.state, event)
        self.state = new

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.state in FINAL:
            raise SlotFinished(f"the slot is {self.state}")
        if isinstance(event, Overdue):
            if self.state is _O.SENT:
                return []  # in flight: it may yet be delivered
            self._move(_O.MOVED, event)
            return [Replace()]
        if isinstance(event, Tick):
            if self.state is _O.SENT:
                return []  # in flight: its outcome comes as an event
            if now >= self.due:
                self._move(_O.SENT, event)
                self.attempts += 1
                return [Send()]
            return [WakeAt(self.due)]
        if isinstance(event, PeerBack):
            if self.state is _O.PENDING:
                self.due, self.delay = now, 0.0
                return [WakeAt(now)]
            self._back = True  # in flight, perhaps to its old address: if that fails, retry at once
            return []
        if isinstance(event, Receipted):
            if self.state is not _O.SENT:
                raise IllegalOutboxMove(self.state, event)
            if event.status == "refused":
                self._move(_O.REFUSED, event)
                return [Record(_O.REFUSED, event.reason)]
            self._move(_O.DELIVERED, event)
            return [Record(_O.DELIVERED)]
        if self.state is not _O.SENT:  # SendFailed
            raise IllegalOutboxMove(self.state, event)
        self._move(_O.PENDING, event)
        if self._back:
            self._back, self.delay, self.due = False, 0.0, now
        else:
            self.delay = min(BACKOFF_MAX, max(BACKOFF_MIN, self.delay * 2))
            self.due = now + self.delay
        return [Record(_O.PENDING, event.error), WakeAt(self.due)]
