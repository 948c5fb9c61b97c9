"""The owner's delivery outbox slot (protocol/_outbox.py), without a network."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shardnet.protocol._outbox import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    OUTBOX_MOVES,
    IllegalOutboxMove,
    OutboxSlot,
    OutboxState,
    PeerBack,
    Receipted,
    Record,
    Send,
    SendFailed,
    SlotFinished,
    Tick,
    WakeAt,
)


def test_send_receipt_delivered() -> None:
    s = OutboxSlot(now=0.0)
    assert s.handle(Tick(), 0.0) == [Send()] and s.state is OutboxState.SENT
    assert s.handle(Tick(), 0.1) == []  # in flight
    assert s.handle(Receipted("stored"), 0.2) == [Record(OutboxState.DELIVERED)]
    with pytest.raises(SlotFinished):
        s.handle(Tick(), 1.0)


def test_refused_is_final_with_its_reason() -> None:
    s = OutboxSlot(now=0.0)
    s.handle(Tick(), 0.0)
    assert s.handle(Receipted("refused", "policy hash mismatch"), 0.1) == [
        Record(OutboxState.REFUSED, "policy hash mismatch")]
    with pytest.raises(SlotFinished):
        s.handle(PeerBack(), 1.0)


def test_failures_back_off_doubling_to_a_cap_and_a_returning_peer_resets_it() -> None:
    s = OutboxSlot(now=0.0)
    now, delays = 0.0, []
    for _ in range(9):
        assert s.handle(Tick(), now) == [Send()]
        out = s.handle(SendFailed("connection refused"), now)
        assert out[0] == Record(OutboxState.PENDING, "connection refused")
        delays.append(s.delay)
        assert s.handle(Tick(), now + s.delay / 2) == [WakeAt(now + s.delay)]  # not yet
        now += s.delay
    assert delays[:4] == [BACKOFF_MIN, 2 * BACKOFF_MIN, 4 * BACKOFF_MIN, 8 * BACKOFF_MIN]
    assert delays[-1] == BACKOFF_MAX and s.attempts == 9
    s.handle(Tick(), now)
    s.handle(SendFailed("down"), now)
    assert s.handle(PeerBack(), now + 1) == [WakeAt(now + 1)] and s.handle(Tick(), now + 1) == [Send()]


def test_an_outcome_for_a_slot_not_in_flight_is_illegal() -> None:
    s = OutboxSlot(now=0.0)
    with pytest.raises(IllegalOutboxMove):
        s.handle(Receipted("stored"), 0.0)
    with pytest.raises(IllegalOutboxMove):
        s.handle(SendFailed("x"), 0.0)


class SlotMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.slot = OutboxSlot(now=0.0)
        self.now = 0.0
        self.history = [self.slot.state]
        self.sends = 0

    def feed(self, event: object) -> list:
        before = self.slot.state
        try:
            out = self.slot.handle(event, self.now)  # type: ignore[arg-type]
        except (IllegalOutboxMove, SlotFinished):
            assert self.slot.state is before  # a refused event changes nothing
            return []
        if self.slot.state is not before:
            assert self.slot.state in OUTBOX_MOVES[before]
        self.history.append(self.slot.state)
        self.sends += sum(isinstance(e, Send) for e in out)
        return out

    @rule(dt=st.floats(0.0, 40.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(Tick())

    @rule(status=st.sampled_from(["stored", "already-held", "refused"]))
    def receipt(self, status: str) -> None:
        self.feed(Receipted(status, "no" if status == "refused" else ""))

    @rule()
    def failed(self) -> None:
        self.feed(SendFailed("timeout"))

    @rule()
    def peer_back(self) -> None:
        self.feed(PeerBack())

    @rule()
    def overdue(self) -> None:
        from shardnet.protocol._outbox import Overdue, Replace

        before = self.slot.state
        out = self.feed(Overdue())
        assert (out == [Replace()]) == (before is OutboxState.PENDING)
        assert self.slot.state is (OutboxState.MOVED if before is OutboxState.PENDING else before)

    @precondition(lambda self: hasattr(self, "slot"))
    @invariant()
    def bounded_and_final(self) -> None:
        assert 0.0 <= self.slot.delay <= BACKOFF_MAX
        assert self.sends == self.slot.attempts
        finals = [s for s in self.history if s in (OutboxState.DELIVERED, OutboxState.REFUSED, OutboxState.MOVED)]
        assert len(finals) <= 1 and (not finals or self.history[-1] is finals[0])


TestSlotMachine = SlotMachine.TestCase
TestSlotMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_a_custodian_back_while_a_send_is_in_flight_is_retried_at_once() -> None:
    s = OutboxSlot(now=0.0)
    s.handle(Tick(), 0.0)
    s.handle(SendFailed("down"), 0.0)
    s.handle(Tick(), 10.0)
    assert s.state is OutboxState.SENT
    assert s.handle(PeerBack(), 10.1) == []  # in flight, perhaps to the old address
    assert s.handle(SendFailed("old address"), 10.2) == [Record(OutboxState.PENDING, "old address"), WakeAt(10.2)]
    assert s.handle(Tick(), 10.2) == [Send()]


def test_an_overdue_pending_slot_is_moved_and_finished() -> None:
    from shardnet.protocol._outbox import Overdue, Replace

    s = OutboxSlot(now=0.0)
    s.handle(Tick(), 0.0)
    assert s.handle(Overdue(), 1.0) == []  # in flight: its outcome decides
    s.handle(SendFailed("unreachable"), 2.0)
    assert s.handle(Overdue(), 3.0) == [Replace()] and s.state is OutboxState.MOVED
    for event in (Tick(), Overdue(), PeerBack()):
        with pytest.raises(SlotFinished):
            s.handle(event, 4.0)
    assert OUTBOX_MOVES[OutboxState.MOVED] == frozenset()
