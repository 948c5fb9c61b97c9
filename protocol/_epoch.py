"""An epoch change (refresh or reshare), from the coordinating authority's side,
as a sans-IO machine. The records and the checks are ``_epoch_records``.

The coordinator signs a :class:`Plan`, then feeds this machine what happens
(deals, echoes, signatures and acknowledgements from peers, asks that failed,
time passing) and carries out what it says: ask a peer, commit the record,
report progress, wake me at, finish. ``now`` is the node's clock, in the same
unit as the plan's deadline.

Round states, and the only moves allowed between them (:data:`EPOCH_MOVES`)::

    DEALING    --every old index dealt or given up, and enough deals--> ECHOING
    DEALING    --too few deals, or the deadline---------------------> ABORTED
    ECHOING    --every new holder answered, t_new + 1 indices echoed-> SIGNING
    ECHOING    --a new holder names a bad deal, enough deals left---> ECHOING (asked again without it)
    ECHOING    --too few echoes, or the deadline--------------------> ABORTED
    SIGNING    --K authority signatures---------------------------> COMMITTING
    SIGNING    --the other authorities refused, or the deadline-----> ABORTED
    COMMITTING --every participant answered, or the grace period----> COMMITTED
    COMMITTED, ABORTED: final; a further event raises RoundOver

Each of the three asking phases may take its share of the time left (a third
of it for the deals, half the rest for the echoes, the rest for the
signatures): a peer that has not answered by then counts as failed, so one
silent peer cannot hold the round until its deadline.

Prepare: one holder of each old index is asked for its deal (the next replica
if it fails). A reshare uses exactly t_old deals (the lowest valid indices), a
refresh every valid deal it got, at least t_old. Each new holder gets the
qualified deals, checks its sub-shares, computes and verifies its new share,
keeps it sealed to itself, and echoes the epoch record it will hold it under.
A new holder that names a bad deal gets that deal dropped once per round; a
second accusation from it only counts as its own failure, so one liar cannot
strip the round of its deals one by one.

Commit: with t_new + 1 indices echoed (all of them when n_new = t_new:
``echoes_needed``), so that one echoer that lies or vanishes cannot leave the
epoch short, the coordinator takes its signing lock (``lock``: an honest
authority signs one record per epoch) and signs the record, and the
other authorities co-sign it once they have checked the same evidence. The
record is written (:class:`Commit`) before it is sent: from then on the round
cannot be undone, and every participant gets it (with the deals, so that a new
holder that missed the echo phase can still compute its share). Old holders
erase their old shares once the record is in their log, and answer with signed
:class:`~._epoch_records.Erased` receipts.

An aborted round changes nothing: the old epoch stays current, and new holders
drop what they kept for it when the plan's deadline passes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._cosign import CoSigned
from ._epoch_records import (
    MAX_EPOCH_RECORD,
    AuthorityRule,
    Deal,
    EpochRecord,
    Erased,
    Plan,
    at_epoch,
    echoed_indices,
    echoes_needed,
    holders_of,
    new_commitments,
    qualified_digest,
)
from ._errors import ShardnetError
from ._keyset import Keyset
from ._records import peer_id_of
from ._sign import Signer

#: Seconds after the plan's deadline that the coordinator still waits for the
#: participants to acknowledge the commit (the commit itself stands either way).
COMMIT_GRACE = 30.0
TICK = 1.0


class EpochState(enum.StrEnum):
    DEALING = "dealing"
    ECHOING = "echoing"
    SIGNING = "signing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


_E = EpochState
EPOCH_MOVES: dict[EpochState, frozenset[EpochState]] = {
    _E.DEALING: frozenset({_E.ECHOING, _E.ABORTED}),
    _E.ECHOING: frozenset({_E.SIGNING, _E.ABORTED}),
    _E.SIGNING: frozenset({_E.COMMITTING, _E.ABORTED}),
    _E.COMMITTING: frozenset({_E.COMMITTED}),
    _E.COMMITTED: frozenset(),
    _E.ABORTED: frozenset(),
}


class RoundOver(ShardnetError):
    """An event reached an epoch round that has already finished."""


class IllegalEpochMove(ShardnetError):
    def __init__(self, old: EpochState, new: EpochState) -> None:
        super().__init__(f"epoch round: {old} -> {new} is not allowed")
        self.old, self.new = old, new


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class DealIn:
    index: int  # the old index asked for
    peer: str
    data: bytes


@dataclass(frozen=True)
class EchoIn:
    peer: str
    data: bytes


@dataclass(frozen=True)
class SignatureIn:
    peer: str
    data: bytes  # the record co-signed by that authority


@dataclass(frozen=True)
class Acked:
    peer: str
    receipts: tuple[bytes, ...]


@dataclass(frozen=True)
class AskFailed:
    """An ask to ``peer`` failed; ``bad_deal``: the old index whose deal a new holder refused."""

    peer: str
    reason: str
    index: int | None = None  # the old index, for a deal ask
    bad_deal: int | None = None


@dataclass(frozen=True)
class Tick:
    pass


Event = Start | DealIn | EchoIn | SignatureIn | Acked | AskFailed | Tick


# -- effects -----------------------------------------------------------------------


@dataclass(frozen=True)
class AskDeal:
    peer: str
    index: int


@dataclass(frozen=True)
class AskEcho:
    peer: str
    deals: tuple[bytes, ...]


@dataclass(frozen=True)
class AskSign:
    peer: str
    deals: tuple[bytes, ...]
    echoes: tuple[bytes, ...]


@dataclass(frozen=True)
class Commit:
    """Write the epoch record (and apply it here) before anything else is sent."""

    record: bytes


@dataclass(frozen=True)
class SendCommit:
    peer: str
    record: bytes
    deals: tuple[bytes, ...]


@dataclass(frozen=True)
class Progress:
    body: dict[str, Any]


@dataclass(frozen=True)
class WakeAt:
    time: float


@dataclass(frozen=True)
class Done:
    record: bytes
    receipts: tuple[bytes, ...]
    unacked: tuple[str, ...]
    bad: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Aborted:
    message: str
    bad: tuple[tuple[str, str], ...]


Effect = AskDeal | AskEcho | AskSign | Commit | SendCommit | Progress | WakeAt | Done | Aborted


@dataclass
class _Old:
    """An old index: its holders in the order they are asked, and its deal once valid."""

    holders: list[str]
    tried: int = 0
    deal: Deal | None = None
    failed: list[str] = field(default_factory=list)


class EpochRound:
    """One refresh or reshare, driven by the authority that signed ``plan``."""

    def __init__(self, plan: Plan, keyset: Keyset, current: EpochRecord | None, key: Signer, *,
                 participants: Sequence[str] = (), lock: Callable[[EpochRecord], None] | None = None) -> None:
        """``keyset``: the keyset record; ``current``: its current epoch record (None at
        epoch 0); ``participants``: who else must learn of the commit (approvers, owner);
        ``lock(record)``: called before this authority signs, raises ShardnetError if it
        signed another record of that epoch already."""
        plan.check_against(keyset, current)
        self.plan = plan
        self.keyset = keyset
        self.current = current
        self.view = at_epoch(keyset, current)
        self.key = key
        self.me = peer_id_of(key.public_key().public_bytes_raw())
        self.rule = AuthorityRule.of(keyset)
        self.state = EpochState.DEALING
        self.old = {i: _Old(list(hs)) for i, hs in sorted(holders_of(self.view).items())}
        self.new_peers = {h: i for i, hs in plan.holders.items() for h in hs}
        self.in_flight: set[str] = set()
        self.qualified: list[Deal] = []
        self.record: EpochRecord | None = None
        self.echoes: dict[str, bytes] = {}
        self.refusals: dict[str, str] = {}
        self.cosigned: CoSigned | None = None
        self.receipts: dict[tuple[str, int], bytes] = {}
        self._now = 0.0
        self.unacked: set[str] = set()
        self.bad: list[tuple[str, str]] = []
        self._accused: set[int] = set()
        self._accusers: set[str] = set()
        self._failures: list[tuple[str, str]] = []  # asks that failed, for the abort message
        self._lock = lock
        self._dealing: dict[str, int] = {}  # peer -> the old index it was asked to deal
        self._phase_end: float | None = None
        extra = set(participants) | set(self.rule.peers) | {peer_id_of(keyset.owner)}
        old_peers = {h for o in self.old.values() for h in o.holders}
        self.participants = sorted((old_peers | set(self.new_peers) | extra) - {self.me})

    # -- the one entry point ---------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.state in (_E.COMMITTED, _E.ABORTED):
            raise RoundOver(f"the epoch round has {self.state}")
        out: list[Effect] = []
        self._now = now
        if self._phase_end is None:
            self._phase_end = self._share_of_time(now, 3)
        if isinstance(event, Start):
            if self.old:
                for i in self.old:
                    self._ask_deal(i, out)
            else:
                self._abort("the keyset names no holders", out)
        elif isinstance(event, DealIn):
            self._on_deal(event, out)
        elif isinstance(event, EchoIn):
            self._on_echo(event, out)
        elif isinstance(event, SignatureIn):
            self._on_signature(event, out)
        elif isinstance(event, Acked):
            self._on_ack(event, out)
        elif isinstance(event, AskFailed):
            self._on_failed(event, out)
        if self.state not in (_E.COMMITTED, _E.ABORTED):
            self._on_time(now, out)
        return out

    def _move(self, new: EpochState) -> None:
        if new not in EPOCH_MOVES[self.state]:
            raise IllegalEpochMove(self.state, new)
        self.state = new

    def _share_of_time(self, now: float, phases_left: int) -> float:
        return now + max(0.0, float(self.plan.deadline) - now) / phases_left

    def _abort(self, message: str, out: list[Effect]) -> None:
        self._move(_E.ABORTED)
        self.in_flight.clear()
        out.append(Aborted(message, tuple(self.bad)))

    def _expect(self, peer: str, states: tuple[EpochState, ...]) -> bool:
        """Whether an answer from ``peer`` is one this state waits for (late ones are dropped)."""
        if self.state not in states or peer not in self.in_flight:
            return False
        self.in_flight.discard(peer)
        return True

    # -- prepare: deals --------------------------------------------------------------

    def _ask_deal(self, index: int, out: list[Effect]) -> None:
        o = self.old[index]
        while o.tried < len(o.holders):
            peer = o.holders[o.tried]
            o.tried += 1
            if peer in self.in_flight:
                continue  # one ask per peer at a time; a peer holds one index of a keyset
            self.in_flight.add(peer)
            self._dealing[peer] = index
            out.append(AskDeal(peer, index))
            return

    def _on_deal(self, event: DealIn, out: list[Effect]) -> None:
        if not self._expect(event.peer, (_E.DEALING,)) or event.index not in self.old:
            return
        o = self.old[event.index]
        try:
            deal = Deal.from_bytes(event.data)
            if deal.index != event.index or peer_id_of(deal.dealer) != event.peer:
                raise ShardnetError(f"the deal is for old index {deal.index}, signed by another peer")
            deal.check(self.plan, self.view)
        except ShardnetError as exc:
            self.bad.append((event.peer, f"invalid deal: {exc}"[:300]))
            o.failed.append(event.peer)
            self._ask_deal(event.index, out)
        else:
            o.deal = deal
        out.append(Progress({"kind": "deals", "have": self._deals_in(), "need": self.view.threshold}))
        self._deals_done(out)

    def _deals_in(self) -> int:
        return sum(o.deal is not None for o in self.old.values())

    def _deals_done(self, out: list[Effect]) -> None:
        if self.state is not _E.DEALING or self.in_flight:
            return
        self._qualify(out)

    def _qualify(self, out: list[Effect]) -> None:
        """Fix the qualified deals (without the accused) and ask every new holder to echo."""
        valid = [o.deal for i, o in self.old.items() if o.deal is not None and i not in self._accused]
        need = self.view.threshold
        if len(valid) < need:
            why = "; ".join(f"{peer}: {reason}" for peer, reason in self._failures[:3])
            self._abort(f"{len(valid)} valid deals from the old holders; the round needs {need}"
                        + (f" ({why})" if why else ""), out)
            return
        self.qualified = valid[:need] if self.plan.action == "reshare" else valid
        self.record = self.plan.record(new_commitments(self.plan, self.view, self.qualified))
        self.echoes.clear()
        self.refusals.clear()
        if self.state is _E.DEALING:
            self._move(_E.ECHOING)
            self._phase_end = self._share_of_time(self._now, 2)
        deals = tuple(d.signed for d in self.qualified)
        for peer in sorted(self.new_peers):
            self.in_flight.add(peer)
            out.append(AskEcho(peer, deals))

    # -- prepare: echoes -------------------------------------------------------------

    def _on_echo(self, event: EchoIn, out: list[Effect]) -> None:
        if not self._expect(event.peer, (_E.ECHOING,)) or self.record is None:
            return
        try:
            got = echoed_indices(self.record, qualified_digest(self.qualified), [event.data])
            if got != {self.new_peers[event.peer]}:
                raise ShardnetError("the echo is for another index")
        except ShardnetError as exc:
            self.bad.append((event.peer, f"invalid echo: {exc}"[:300]))
            self.refusals[event.peer] = str(exc)
        else:
            self.echoes[event.peer] = event.data
        self._echoes_progress(out)

    def _echoes_progress(self, out: list[Effect]) -> None:
        out.append(Progress({"kind": "echoes", "have": len(self._echoed()), "need": echoes_needed(self.plan)}))
        if self.in_flight or self.state is not _E.ECHOING:
            return
        if self._accused & {d.index for d in self.qualified}:
            self._qualify(out)  # ask again without the accused deals
            return
        if len(self._echoed()) < echoes_needed(self.plan):
            why = "; ".join(f"{peer}: {reason}" for peer, reason in self._failures[-3:])
            self._abort(f"{len(self._echoed())} new indices echoed the record; it needs "
                        f"{echoes_needed(self.plan)} (the new threshold {self.plan.threshold}, and one to spare)"
                        + (f" ({why})" if why else ""), out)
            return
        self._sign(out)

    def _echoed(self) -> set[int]:
        return {self.new_peers[p] for p in self.echoes}

    # -- commit: authority signatures ------------------------------------------------

    def _sign(self, out: list[Effect]) -> None:
        assert self.record is not None
        self._move(_E.SIGNING)
        self._phase_end = float(self.plan.deadline)
        if self._lock is not None:
            try:
                self._lock(self.record)
            except ShardnetError as exc:
                self._abort(f"this authority will not sign: {exc}", out)
                return
        self.cosigned = CoSigned.propose(self.key, self.record.body())
        if self.cosigned.complete(self.rule.quorum):
            self._commit(out)
            return
        deals = tuple(d.signed for d in self.qualified)
        echoes = tuple(self.echoes.values())
        for peer in self.rule.peers:
            if peer != self.me:
                self.in_flight.add(peer)
                out.append(AskSign(peer, deals, echoes))

    def _on_signature(self, event: SignatureIn, out: list[Effect]) -> None:
        if not self._expect(event.peer, (_E.SIGNING,)) or self.cosigned is None:
            return
        try:
            cs = CoSigned.from_bytes(event.data, authorities=self.rule.keys, max_size=MAX_EPOCH_RECORD)
            if cs.body != self.cosigned.body:
                raise ShardnetError("it signed another record")
            self.cosigned = self.cosigned.merged(cs)
        except ShardnetError as exc:
            self.bad.append((event.peer, f"invalid co-signature: {exc}"[:300]))
        out.append(Progress({"kind": "signatures", "have": len(self.cosigned.signatures),
                             "need": self.rule.quorum}))
        if self.cosigned.complete(self.rule.quorum):
            self.in_flight.clear()
            self._commit(out)
        elif not self.in_flight:
            self._abort(f"{len(self.cosigned.signatures)} of the {self.rule.quorum} authority signatures", out)

    def _commit(self, out: list[Effect]) -> None:
        assert self.cosigned is not None
        self._move(_E.COMMITTING)
        data = self.cosigned.to_bytes()
        out.append(Commit(data))
        deals = tuple(d.signed for d in self.qualified)
        for peer in self.participants:
            self.in_flight.add(peer)
            out.append(SendCommit(peer, data, deals))
        self.unacked = set(self.participants)
        if not self.participants:
            self._finish(out)

    # -- commit: acknowledgements and deletion receipts ------------------------------

    def add_receipts(self, peer: str, receipts: Sequence[bytes]) -> None:
        """Keep the valid deletion receipts of old holders (the coordinator's own too)."""
        assert self.record is not None
        for data in receipts[:16]:
            try:
                r = Erased.from_bytes(data)
            except ShardnetError as exc:
                self.bad.append((peer, f"invalid deletion receipt: {exc}"[:300]))
                continue
            if (r.holder_id == peer and r.keyset_id == self.plan.keyset_id and r.epoch == self.view.epoch
                    and r.record == self.record.digest and peer in self.old.get(r.index, _Old([])).holders):
                self.receipts[(peer, r.index)] = data

    def _on_ack(self, event: Acked, out: list[Effect]) -> None:
        if not self._expect(event.peer, (_E.COMMITTING,)):
            return
        self.add_receipts(event.peer, event.receipts)
        self.unacked.discard(event.peer)
        if not self.in_flight:
            self._finish(out)

    def _finish(self, out: list[Effect]) -> None:
        assert self.cosigned is not None
        self._move(_E.COMMITTED)
        out.append(Done(self.cosigned.to_bytes(), tuple(self.receipts[k] for k in sorted(self.receipts)),
                        tuple(sorted(self.unacked)), tuple(self.bad)))

    # -- failures and time -----------------------------------------------------------

    def _on_failed(self, event: AskFailed, out: list[Effect]) -> None:
        if self.state is _E.DEALING and event.index is not None:
            if not self._expect(event.peer, (_E.DEALING,)) or event.index not in self.old:
                return
            self.old[event.index].failed.append(event.peer)
            self._failures.append((event.peer, event.reason[:160]))
            self._ask_deal(event.index, out)
            self._deals_done(out)
        elif self.state is _E.ECHOING:
            if not self._expect(event.peer, (_E.ECHOING,)):
                return
            self.refusals[event.peer] = event.reason
            self._failures.append((event.peer, event.reason[:160]))
            if (event.bad_deal is not None and event.bad_deal in {d.index for d in self.qualified}
                    and event.peer not in self._accusers):
                self._accusers.add(event.peer)  # one accusation per new holder and round
                dealer = self.old[event.bad_deal].deal
                who = peer_id_of(dealer.dealer) if dealer is not None else "?"
                self.bad.append((who, f"new holder {event.peer} says its deal for old index "
                                      f"{event.bad_deal} is bad: {event.reason}"[:300]))
                self._accused.add(event.bad_deal)
            self._echoes_progress(out)
        elif self.state is _E.SIGNING:
            if self._expect(event.peer, (_E.SIGNING,)) and not self.in_flight:
                assert self.cosigned is not None
                self._abort(f"{len(self.cosigned.signatures)} of the {self.rule.quorum} authority signatures; "
                            f"{event.peer}: {event.reason}", out)
        elif self.state is _E.COMMITTING:
            if self._expect(event.peer, (_E.COMMITTING,)) and not self.in_flight:
                self._finish(out)

    def _on_time(self, now: float, out: list[Effect]) -> None:
        deadline = float(self.plan.deadline)
        if self.state is _E.COMMITTING:
            if now >= deadline + COMMIT_GRACE:
                self.in_flight.clear()
                self._finish(out)
            else:
                out.append(WakeAt(min(now + TICK, deadline + COMMIT_GRACE)))
            return
        if now >= deadline:
            self._abort(f"the round passed its deadline in the {self.state} phase", out)
            return
        if self._phase_end is not None and now >= self._phase_end and self.in_flight:
            self._give_up(out)
            if self.state in (_E.COMMITTING, _E.COMMITTED, _E.ABORTED):
                return
        wake = min(now + TICK, deadline)
        if self._phase_end is not None and self._phase_end > now:
            wake = min(wake, self._phase_end)
        out.append(WakeAt(wake))

    def _give_up(self, out: list[Effect]) -> None:
        """The phase's time is up: every peer still asked counts as failed."""
        state = self.state
        for peer in sorted(self.in_flight):
            if self.state is not state:
                break
            index = self._dealing.get(peer) if state is _E.DEALING else None
            self._on_failed(AskFailed(peer, "no answer in the phase's time", index=index), out)
