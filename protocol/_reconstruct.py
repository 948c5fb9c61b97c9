"""The requester's side of a reconstruction: a session that collects releases.

The node asks holders (over the network, not here) and feeds every outcome in:
:meth:`Session.on_release`, :meth:`Session.on_refused`,
:meth:`Session.on_unreachable`. Every release is verified on arrival (its
signature, that it answers this request for an index that custodian holds,
and the DLEQ proof or the share against the commitments). A bad one names its
custodian and is never used. A holder may answer instead that it holds no share
(a signed :class:`~._requests.NoShard`): from a holder whose receipt for a share of
this epoch the requester keeps (the owner keeps them all), that is a lie in one of
the two, and names it too; without such a receipt it is a refusal. :meth:`Session.targets` says whom to ask next,
redundant replicas included; :meth:`Session.result` opens the key from t valid
answers, and :meth:`Session.failure` says in one line what was missing.

Holder states, and the only moves allowed between them (:data:`HOLDER_MOVES`)::

    untried -> asked -> ok | refused | unreachable | invalid | other-epoch
    refused | unreachable -> asked   (asked again later)
    asked | ok -> invalid            (a bad release, even after a good one)
    ok, invalid, other-epoch: final  (nothing more is taken from a liar; a holder
                                      that answered from another epoch is not
                                      asked again in this round)

A holder that releases at another epoch than the record's is not a liar: one of
the two missed a commit. From an older epoch, it has not applied it yet; from a
newer one, the requester has not, and :attr:`Session.newer` says so (the round
then ends :class:`~._release_round.Stale` if it is short of t). Once the record is
the network's newest (``fetched``), a claim of a later epoch is not believed.

Any other move raises :class:`IllegalHolderMove`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._errors import InvalidPartial, InvalidShare, ShardnetError, TooFewShares
from ._keyset import Keyset, Share, combine_key, verify_share
from ._records import Receipt
from ._requests import NoShard, Release, Request, is_no_shard, share_from_payload
from ._shard import HpkePrivateKey
from ._unwrap import Partial, combine_partials, verify_partial


class ReconstructionFailed(ShardnetError):
    """Too few valid answers; the message says who was missing and why."""


class HolderState(enum.StrEnum):
    UNTRIED = "untried"
    ASKED = "asked"
    OK = "ok"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    INVALID = "invalid"
    OTHER_EPOCH = "other-epoch"


_H = HolderState
#: state -> the states a holder may move to from it.
HOLDER_MOVES: dict[HolderState, frozenset[HolderState]] = {
    _H.UNTRIED: frozenset({_H.ASKED}),
    _H.ASKED: frozenset({_H.OK, _H.REFUSED, _H.UNREACHABLE, _H.INVALID, _H.OTHER_EPOCH}),
    _H.REFUSED: frozenset({_H.ASKED}),
    _H.UNREACHABLE: frozenset({_H.ASKED}),
    _H.OK: frozenset({_H.INVALID}),
    _H.INVALID: frozenset(),
    _H.OTHER_EPOCH: frozenset(),
}


class IllegalHolderMove(ShardnetError):
    """A holder was moved between states the round does not allow."""

    def __init__(self, peer: str, old: HolderState, new: HolderState) -> None:
        super().__init__(f"holder {peer}: {old} -> {new} is not allowed")
        self.peer, self.old, self.new = peer, old, new


@dataclass
class Holder:
    peer: str
    indices: list[int]
    state: HolderState = HolderState.UNTRIED
    detail: str = ""

    def move(self, new: HolderState, detail: str | None = None) -> None:
        if new not in HOLDER_MOVES[self.state]:
            raise IllegalHolderMove(self.peer, self.state, new)
        self.state = new
        if detail is not None:
            self.detail = detail


class Session:
    def __init__(
        self, keyset: Keyset, request: Request, ephemeral: HpkePrivateKey,
        names: Mapping[str, str] | None = None, receipts: Iterable[Receipt] = (), *,
        fetched: bool = False, invalid: Iterable[str] = (),
    ) -> None:
        """``receipts``: the holders' receipts the requester keeps (verified records); those
        that say a holder took a share of this keyset at its epoch count against a denial.
        ``fetched``: ``keyset`` is the newest record the network showed. ``invalid``:
        holders an earlier round for this request named; never asked, not named again."""
        if request.keyset_id != keyset.keyset_id:
            raise ValueError("request and keyset differ")
        self.keyset = keyset
        self.request = request
        self.ephemeral = ephemeral
        self.names = dict(names or {})
        self.holders: dict[str, Holder] = {}
        for i, peers in keyset.attrs.get("holders", {}).items():
            for peer in peers:
                self.holders.setdefault(peer, Holder(peer, [])).indices.append(int(i))
        self.receipted: dict[str, list[int]] = {}  # holder -> the indices it signed for, at this epoch
        for r in receipts:
            h = self.holders.get(r.custodian)
            if (r.keyset_id, r.epoch) == (keyset.keyset_id, keyset.epoch) and r.status != "refused" and (
                    h is not None and r.index in h.indices):
                self.receipted.setdefault(r.custodian, []).append(r.index)
        self.partials: dict[int, Partial] = {}
        self.shares: dict[int, Share] = {}
        self.bad: list[tuple[str, str]] = []
        self.denied: set[str] = set()  # the invalid that denied a share they signed for
        self.newer: int | None = None  # the newest epoch a holder answered at, if newer than the record's
        self.fetched = fetched
        for peer in invalid:
            if peer in self.holders:
                self.holders[peer].state = _H.INVALID

    @property
    def needed(self) -> int:
        return self.keyset.threshold

    def have(self) -> int:
        return len(self.partials) if self.request.mode == "unwrap" else len(self.shares)

    def complete(self) -> bool:
        return self.have() >= self.needed

    def _got(self) -> set[int]:
        return set(self.partials) | set(self.shares)

    def targets(self, *, retry: bool = False) -> list[str]:
        """Holders worth asking now: they hold an index we still lack."""
        if self.complete():
            return []
        missing = self._got()
        ok_states = (_H.UNTRIED,) + ((_H.REFUSED, _H.UNREACHABLE) if retry else ())
        return [h.peer for h in self.holders.values()
                if h.state in ok_states and any(i not in missing for i in h.indices)]

    def asked(self, peer: str) -> None:
        self.holders[peer].move(_H.ASKED)

    def name(self, peer: str) -> str:
        return self.names.get(peer) or peer

    def on_refused(self, peer: str, reason: str) -> None:
        self._answer(peer).move(_H.REFUSED, reason)

    def on_unreachable(self, peer: str, error: str) -> None:
        self._answer(peer).move(_H.UNREACHABLE, error)

    def _answer(self, peer: str) -> Holder:
        """The holder an answer is from; it must have been asked (see :meth:`asked`)."""
        h = self.holders.get(peer)
        if h is None:
            raise ValueError(f"{peer} holds no shard of this keyset")
        if h.state is _H.UNTRIED:
            raise ValueError(f"an answer from {peer}, which was not asked")
        return h

    def _invalid(self, peer: str, detail: str) -> None:
        h = self.holders[peer]
        if h.state is _H.INVALID:
            return  # one entry per custodian, however much it sent
        self.bad.append((peer, detail))
        h.move(_H.INVALID, detail)

    def on_release(self, peer: str, data: bytes) -> None:
        """Verify one release from ``peer``; a bad one marks ``peer`` invalid."""
        h = self._answer(peer)
        if h.state is _H.INVALID:
            return  # nothing more from a custodian that already lied
        if is_no_shard(data):
            self._on_no_shard(h, data)
            return
        try:
            rel = Release.from_bytes(data, custodian=peer)
            if (rel.request_id, rel.keyset_id, rel.mode) == (self.request.id, self.keyset.keyset_id,
                                                             self.request.mode) and rel.epoch != self.keyset.epoch:
                # Not a lie: one of the two missed a commit. That share cannot be checked here.
                self._other_epoch(h, rel.epoch)
                return
            if (rel.request_id, rel.keyset_id, rel.epoch, rel.mode) != (
                self.request.id, self.keyset.keyset_id, self.keyset.epoch, self.request.mode
            ):
                raise InvalidShare(rel.index, self.name(peer), "answers another request, keyset or mode")
            if rel.index not in h.indices:
                raise InvalidShare(rel.index, self.name(peer), "not an index this custodian holds")
            payload = rel.open(self.ephemeral)
            if rel.mode == "unwrap":
                partial = Partial.from_bytes(payload)
                if partial.index != rel.index:
                    raise InvalidPartial(rel.index, self.name(peer), "index differs from the release")
                verify_partial(self.keyset, partial, self.request.id.encode(), self.name(peer))
                self.partials[rel.index] = partial
            else:
                share = share_from_payload(payload, self.keyset.keyset_id, self.keyset.epoch)
                if share.index != rel.index:
                    raise InvalidShare(rel.index, self.name(peer), "index differs from the release")
                verify_share(self.keyset, share, self.name(peer))
                self.shares[rel.index] = share
        except ShardnetError as exc:
            self._invalid(peer, str(exc))
            return
        if h.state is _H.ASKED:  # a holder with two indices answers twice; it is OK after the first
            h.move(_H.OK)

    def _on_no_shard(self, h: Holder, data: bytes) -> None:
        """``h`` says it holds no share: a lie beside its own receipt, else a refusal."""
        try:
            d = NoShard.from_bytes(data, custodian=h.peer)
        except ShardnetError as exc:
            self._invalid(h.peer, f"an invalid no-shard answer: {exc}")
            return
        if (d.request_id, d.keyset_id) != (self.request.id, self.keyset.keyset_id):
            self._invalid(h.peer, "its no-shard answer answers another request or keyset")
            return
        said = "knows no such keyset" if d.epoch is None else f"holds no share of this keyset at epoch {d.epoch}"
        signed_for = self.receipted.get(h.peer)
        if h.state is _H.OK:
            self._invalid(h.peer, f"released a share, and also says it {said}")
        elif signed_for and (d.epoch is None or d.epoch <= self.keyset.epoch):
            said = "knows no such keyset" if d.epoch is None else f"holds none at epoch {d.epoch}"
            self._invalid(h.peer, f"signed a receipt for index {signed_for[0]} at epoch {self.keyset.epoch}, "
                                  f"and now says it {said}")
            self.denied.add(h.peer)
        elif h.state is _H.ASKED:  # no receipt of its to hold against it, or its view is newer
            if d.epoch is not None and d.epoch > self.keyset.epoch:
                self._newer(h, d.epoch, f"says it {said}")
            else:
                h.move(_H.REFUSED, f"says it {said}")

    def _other_epoch(self, h: Holder, epoch: int) -> None:
        """``h`` released a share of another epoch (see the module's docstring)."""
        if epoch > self.keyset.epoch:
            self._newer(h, epoch, f"answers at epoch {epoch}, newer than this record's epoch {self.keyset.epoch}")
        elif h.state is _H.ASKED:
            h.move(_H.OTHER_EPOCH, f"answers at epoch {epoch}: it has not applied epoch {self.keyset.epoch} yet")
        else:
            self._invalid(h.peer, f"released a share at epoch {self.keyset.epoch}, and one at epoch {epoch}")

    def _newer(self, h: Holder, epoch: int, detail: str) -> None:
        """``h`` answers from an epoch after this record's: not asked again this round, and
        (unless this record is the network's newest) a sign that the record is stale."""
        if self.fetched:
            detail = f"{detail}, which no record the network showed backs"
        else:
            self.newer = max(epoch, self.newer or 0)
        if h.state is _H.ASKED:
            h.move(_H.OTHER_EPOCH, detail)
        else:  # it released a share of this epoch, and now answers from another
            self._invalid(h.peer, f"released a share at epoch {self.keyset.epoch}, and {detail}")

    def result(self) -> bytes:
        if not self.complete():
            raise ReconstructionFailed(self.failure())
        if self.request.mode == "unwrap":
            use = [self.partials[i] for i in sorted(self.partials)[: self.needed]]
            master, bad = combine_partials(self.keyset, use, self.request.id.encode())
            assert not bad  # each was verified on arrival
            return master
        try:
            return combine_key(self.keyset, [self.shares[i] for i in sorted(self.shares)]).master
        except TooFewShares as exc:  # pragma: no cover - every share was verified on arrival
            raise ReconstructionFailed(str(exc)) from None

    def failure(self) -> str:
        """One line: how many valid answers of how many, and what happened to the rest."""
        unit = "partial decryptions" if self.request.mode == "unwrap" else "shares"
        details = []
        unreachable = [self.name(h.peer) for h in self.holders.values() if h.state is _H.UNREACHABLE]
        if unreachable:
            details.append(f"custodians {', '.join(unreachable)} unreachable")
        for h in self.holders.values():
            if h.peer in self.denied:
                details.append(f"{self.name(h.peer)} denies holding the share it signed for")
            elif h.state is _H.INVALID:
                details.append(f"{self.name(h.peer)} sent an invalid {'share' if unit == 'shares' else 'partial'}")
            elif h.state in (_H.REFUSED, _H.OTHER_EPOCH):
                details.append(f"{self.name(h.peer)} {'refused: ' if h.state is _H.REFUSED else ''}{h.detail}")
        silent = [self.name(h.peer) for h in self.holders.values() if h.state in (_H.UNTRIED, _H.ASKED)]
        if silent:
            details.append(f"no answer from {', '.join(silent)}")
        head = f"{self.have()} of {self.needed} required {unit}"
        return head + (": " + "; ".join(details) if details else "")
