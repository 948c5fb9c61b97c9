"""The requester's release round, as a sans-IO machine.

The node signs a request, then feeds this machine what happens (votes seen,
answers from custodians, time passing) and carries out what it says (publish,
ask, report progress, wake me at, finish). Nothing here does IO or reads a
clock: ``now`` comes with every event, in the node's monotonic time base.

Round states, and the only moves allowed between them (:data:`ROUND_MOVES`)::

    WAITING --quorum of approvals seen---------------------> ASKING
    WAITING --denials and void approvers leave it short----> FAILED
    WAITING --deadline-------------------------------------> FAILED
    ASKING  --t valid answers in, and every ask answered---> SUCCEEDED
    ASKING  --t valid answers in, deadline-----------------> SUCCEEDED
    ASKING  --deadline, or nobody left worth asking--------> FAILED
    ASKING  --every ask answered, short of t, and a holder
              answered at a newer epoch than the record's----> FAILED (Stale)
    SUCCEEDED, FAILED: final; a further event raises RoundOver

While WAITING the request is published again (gossip is lossy): REPUBLISH
seconds after the first time, then at gaps that double up to REPUBLISH_MAX, so
that a round waiting long on its approvers does not fill its peers' caches with
copies. Once the quorum is in, it is not published again. While ASKING every holder that holds a missing index is asked at
once, redundant replicas included, and every answer is heard before the round
ends, so that a liar among them is named even when t honest answers came
first. Once no ask is in flight, the refused and the unreachable are asked
again after RETRY seconds. Each answer goes through
:class:`Session`, which verifies every release on arrival and marks a liar
invalid for good (see its holder machine).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ShardnetError
from ._keyset import Keyset
from ._quorum import ApprovalRule, Tally
from ._quorum import State as TallyState
from ._reconstruct import HolderState, ReconstructionFailed, Session
from ._records import Receipt
from ._requests import Request
from ._shard import HpkePrivateKey

REPUBLISH = 3.0  # the first gap before the request is published again; each gap doubles...
REPUBLISH_MAX = 15.0  # ...up to this (a connected approver that missed every copy waits for one)
RETRY = 1.0
TICK = 1.0  # the longest the machine sleeps while it waits for something


class RoundState(enum.StrEnum):
    WAITING = "waiting"
    ASKING = "asking"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_R = RoundState
ROUND_MOVES: dict[RoundState, frozenset[RoundState]] = {
    _R.WAITING: frozenset({_R.ASKING, _R.FAILED}),
    _R.ASKING: frozenset({_R.SUCCEEDED, _R.FAILED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
}


class RoundOver(ShardnetError):
    """An event reached a round that has already finished."""


class IllegalRoundMove(ShardnetError):
    def __init__(self, old: RoundState, new: RoundState) -> None:
        super().__init__(f"release round: {old} -> {new} is not allowed")
        self.old, self.new = old, new


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The request is signed and stored; the round begins."""


@dataclass(frozen=True)
class VotesSeen:
    """The node's tally of the request changed (gossip, sync, its own vote)."""

    tally: Tally


@dataclass(frozen=True)
class Released:
    """A custodian answered with signed releases (one per index it holds)."""

    peer: str
    items: tuple[bytes, ...]


@dataclass(frozen=True)
class Refused:
    peer: str
    reason: str


@dataclass(frozen=True)
class Unreachable:
    peer: str
    error: str


@dataclass(frozen=True)
class Tick:
    """Time passed (the node woke up at or after a WakeAt)."""


Event = Start | VotesSeen | Released | Refused | Unreachable | Tick


# -- effects -----------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """Gossip the signed request (again)."""

    data: bytes


@dataclass(frozen=True)
class Ask:
    """Send a release ask to ``peer`` carrying these signed approvals; feed its answer back."""

    peer: str
    votes: tuple[bytes, ...]


@dataclass(frozen=True)
class Progress:
    body: dict[str, Any]


@dataclass(frozen=True)
class WakeAt:
    time: float


@dataclass(frozen=True)
class Succeeded:
    master: bytes = field(repr=False)
    used_indices: tuple[int, ...]
    bad: tuple[tuple[str, str], ...]  # (custodian, what was wrong), one per liar
    timings: dict[str, float]


@dataclass(frozen=True)
class Failed:
    message: str
    bad: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Stale:
    """Holders answered at ``epoch``, newer than the round's record, and t valid answers
    at the record's epoch are out of reach: the node fetches the newer record and runs a
    new round for the same request."""

    epoch: int
    bad: tuple[tuple[str, str], ...]


Effect = Publish | Ask | Progress | WakeAt | Succeeded | Failed | Stale


class ReleaseRound:
    """One reconstruction request, from the requester's side."""

    def __init__(self, keyset: Keyset, request: Request, ephemeral: HpkePrivateKey, *, deadline: float,
                 timeout: float, names: Mapping[str, str] | None = None, receipts: Iterable[Receipt] = (),
                 fetched: bool = False, invalid: Iterable[str] = ()) -> None:
        """``fetched`` and ``invalid``: for a round after a :class:`Stale` one (see
        :class:`Session`)."""
        self.session = Session(keyset, request, ephemeral, names, receipts, fetched=fetched, invalid=invalid)
        self.request = request
        self.deadline = deadline
        self.timeout = timeout
        self.state = RoundState.WAITING
        self.in_flight: set[str] = set()
        self.votes: tuple[bytes, ...] = ()
        self._published = float("-inf")
        self._gap = REPUBLISH
        self._retry_at = float("inf")
        self._started: float | None = None
        self._quorum_at: float | None = None
        self._void: list[str] = []
        self._approvals = 0
        self._quorum = ApprovalRule.of(keyset).quorum

    @property
    def quorum_at(self) -> float | None:
        """When the quorum was seen (in the node's time base), if it was."""
        return self._quorum_at

    # -- the one entry point ---------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.state in (_R.SUCCEEDED, _R.FAILED):
            raise RoundOver(f"the release round has {self.state}")
        if self._started is None:
            self._started = now
        out: list[Effect] = []
        if isinstance(event, VotesSeen):
            self._on_votes(event.tally, now, out)
        elif isinstance(event, Released | Refused | Unreachable):
            self._on_answer(event, now, out)
        if self.state in (_R.WAITING, _R.ASKING):
            self._on_time(now, out)
        return out

    def _move(self, new: RoundState) -> None:
        if new not in ROUND_MOVES[self.state]:
            raise IllegalRoundMove(self.state, new)
        self.state = new

    # -- waiting for the quorum ------------------------------------------------------

    def _on_votes(self, tally: Tally, now: float, out: list[Effect]) -> None:
        if tally.request.id != self.request.id:
            raise ValueError("a tally of another request")
        if self.state is not _R.WAITING:
            return  # late votes change nothing once the holders are asked
        self._void = sorted(tally.equivocations)
        self._approvals = tally.approvals
        out.append(Progress({"kind": "votes", "approvals": tally.approvals, "denials": tally.denials,
                             "void": self._void, "quorum": tally.rule.quorum}))
        state = tally.state(int(self.request.created))  # expiry is the deadline's business
        if state is TallyState.APPROVED:
            self._move(_R.ASKING)
            self._quorum_at = now
            self.votes = tuple(v.signed for v in tally.votes.values())
            self._ask(self.session.targets(), out)
        elif state is TallyState.REJECTED:
            self._fail(f"request denied: {tally.denials} approvers voted deny{self._voided()}, quorum "
                       f"{tally.rule.quorum} is out of reach", out)

    def _voided(self) -> str:
        return (f", {len(self._void)} void for contradictory votes ({', '.join(self._void)})"
                if self._void else "")

    # -- asking the holders ----------------------------------------------------------

    def _ask(self, peers: list[str], out: list[Effect]) -> None:
        for peer in peers:
            self.session.asked(peer)
            self.in_flight.add(peer)
            out.append(Ask(peer, self.votes))

    def _on_answer(self, event: Released | Refused | Unreachable, now: float, out: list[Effect]) -> None:
        if event.peer not in self.in_flight:
            raise ValueError(f"an answer from {event.peer}, which was not asked")
        self.in_flight.discard(event.peer)
        if isinstance(event, Released):
            holder = self.session.holders[event.peer]
            for item in (event.items or (b"",))[:len(holder.indices)]:
                if holder.state not in (HolderState.ASKED, HolderState.OK):
                    break  # it said it holds none, or lied: the rest of its answer is not read
                self.session.on_release(event.peer, item)
        elif isinstance(event, Refused):
            self.session.on_refused(event.peer, event.reason)
        else:
            self.session.on_unreachable(event.peer, event.error)
        out.append(Progress({"kind": "releases", "have": self.session.have(), "need": self.session.needed}))
        if self.in_flight:
            return  # every answer asked for is heard, so that a liar among them is named
        if self.session.complete():
            self._succeed(now, out)
        elif self.session.newer is not None:  # asking again at this epoch cannot help
            self._move(_R.FAILED)
            out.append(Stale(self.session.newer, tuple(self.session.bad)))
        else:
            self._retry_at = now + RETRY

    def _succeed(self, now: float, out: list[Effect]) -> None:
        try:
            master = self.session.result()
        except ReconstructionFailed as exc:  # pragma: no cover - complete() said t valid answers
            self._fail(str(exc), out)
            return
        self._move(_R.SUCCEEDED)
        s = self.session
        used = sorted(s.partials)[: s.needed] if self.request.mode == "unwrap" else sorted(s.shares)
        start = self._started if self._started is not None else now
        quorum = self._quorum_at if self._quorum_at is not None else now
        out.append(Succeeded(master, tuple(used), tuple(s.bad), {
            "quorum": round((quorum - start) * 1000, 1), "release": round((now - quorum) * 1000, 1),
            "total": round((now - start) * 1000, 1)}))

    def _fail(self, message: str, out: list[Effect]) -> None:
        self._move(_R.FAILED)
        self.in_flight.clear()
        out.append(Failed(message, tuple(self.session.bad)))

    # -- time ------------------------------------------------------------------------

    def _on_time(self, now: float, out: list[Effect]) -> None:
        if now >= self.deadline:
            if self.state is _R.ASKING and self.session.complete():
                self._succeed(now, out)  # t valid answers are in; the silent rest is not waited for
            elif self.state is _R.WAITING:
                self._fail(f"no quorum within {self.timeout:.0f} s: {self._approvals_line()}", out)
            else:
                self._fail(self.session.failure(), out)
            return
        if self.state is _R.WAITING:
            if now - self._published >= self._gap:
                if self._published != float("-inf"):
                    self._gap = min(2 * self._gap, REPUBLISH_MAX)
                self._published = now
                out.append(Publish(self.request.signed))
        elif not self.in_flight:
            again = self.session.targets(retry=True)
            if not again:  # every holder answered for good (ok or invalid), and t are not in
                self._fail(self.session.failure(), out)
                return
            if now >= self._retry_at:
                self._retry_at = float("inf")
                self._ask(again, out)
        out.append(WakeAt(min(self.deadline, now + TICK, self._retry_at)))

    def _approvals_line(self) -> str:
        return f"{self._approvals} of {self._quorum} approvals{self._voided()}"
