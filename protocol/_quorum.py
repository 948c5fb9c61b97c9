"""Approval quorum and the custodian's release decision (a state machine per request).

States of a :class:`Tally` and the transitions between them::

    PENDING --(approvals reach quorum)-----------------> APPROVED
    PENDING --(denials and voided approvers leave
               too few possible approvals)-------------> REJECTED
    APPROVED --(an approver equivocates, approvals
                fall below quorum)---------------------> PENDING or REJECTED
    any --(now > request.not_after)--------------------> EXPIRED

Per approver, the votes seen so far move it through::

    (none) --vote--> COUNTED --same decision again--> COUNTED   (a duplicate)
    COUNTED --the other decision--> VOIDED                      (equivocation)
    VOIDED --any vote--> VOIDED

Two different votes from one approver on one request void that approver: it
counts neither as an approval nor as a denial, whatever order the votes came in
and whichever path brought them (gossip, sync, a release ask's evidence). The
tally keeps both signed votes in :attr:`Tally.equivocations` as evidence. The
outcome is a function of the *set* of valid votes seen, never of their order.

A vote that is not allowed at all raises :class:`VoteRejected` naming why: for
another request or keyset, from someone who is not an approver, after the
request expired, or dated outside the request's lifetime.

:func:`decide_release` is what every custodian runs on its own before it
releases anything: the request is signed, fresh and for this keyset; the
keyset is active; the approvals it can verify reach the quorum; and the
keyset's Cedar policy allows it in this custodian's current threat level.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._errors import RemoteProtocolError, ShardnetError
from ._keyset import Keyset
from ._requests import Request, Vote
from ._wire import MAX_CLOCK_SKEW


class VoteRejected(RemoteProtocolError):
    """A vote does not count; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"vote rejected: {reason}")


class ReleaseDenied(ShardnetError):
    """This custodian will not release for this request; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class State(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class ApprovalRule:
    approvers: frozenset[str]
    quorum: int

    @classmethod
    def of(cls, keyset: Keyset) -> ApprovalRule:
        """The keyset's approvers and quorum: by default its custodians, quorum t."""
        approvers = keyset.attrs.get("approvers")
        if not approvers:
            holders = keyset.attrs.get("holders", {})
            approvers = sorted({h for hs in holders.values() for h in hs})
        quorum = int(keyset.attrs.get("quorum") or keyset.threshold)
        if not 1 <= quorum <= len(approvers):
            raise RemoteProtocolError(f"keyset record: quorum {quorum} of {len(approvers)} approvers")
        return cls(frozenset(str(a) for a in approvers), quorum)


class Added(enum.Enum):
    """What :meth:`Tally.add` did with a vote."""

    COUNTED = "counted"  # the approver's first vote
    DUPLICATE = "duplicate"  # the same decision again: counts once
    EQUIVOCATION = "equivocation"  # the other decision: the approver is now void
    VOIDED = "voided"  # the approver was void already


@dataclass(frozen=True)
class Equivocation:
    """Two signed votes of one approver on one request, with different decisions."""

    approver: str
    request_id: str
    first: Vote
    second: Vote


class Tally:
    """The votes on one request, as far as this node has seen them."""

    def __init__(self, request: Request, rule: ApprovalRule) -> None:
        self.request = request
        self.rule = rule
        self.votes: dict[str, Vote] = {}  # approver -> its one counted vote
        self.equivocations: dict[str, Equivocation] = {}  # approver -> evidence; never counted

    def add(self, vote: Vote, now: int) -> Added:
        """Take a vote into the tally. Raises VoteRejected for a vote that is not allowed."""
        if vote.request_id != self.request.id:
            raise VoteRejected("it is for another request")
        if vote.keyset_id != self.request.keyset_id:
            raise VoteRejected("it is for another keyset")
        if vote.approver not in self.rule.approvers:
            raise VoteRejected(f"{vote.approver} is not an approver of this keyset")
        if now > self.request.not_after:
            raise VoteRejected("the request has expired")
        if not self.request.created - MAX_CLOCK_SKEW <= vote.time <= self.request.not_after:
            raise VoteRejected("it is dated outside the request's lifetime")
        if vote.approver in self.equivocations:
            return Added.VOIDED
        earlier = self.votes.get(vote.approver)
        if earlier is None:
            self.votes[vote.approver] = vote
            return Added.COUNTED
        if earlier.decision == vote.decision:
            return Added.DUPLICATE
        del self.votes[vote.approver]
        self.equivocations[vote.approver] = Equivocation(vote.approver, self.request.id, earlier, vote)
        return Added.EQUIVOCATION

    def add_all(self, votes: Iterable[Vote], now: int) -> list[VoteRejected]:
        """Add every vote; return the ones that were not allowed (they change nothing)."""
        rejected = []
        for v in votes:
            try:
                self.add(v, now)
            except VoteRejected as exc:
                rejected.append(exc)
        return rejected

    def voted(self, approver: str) -> bool:
        """Whether this approver has cast a vote that the tally holds (counted or void)."""
        return approver in self.votes or approver in self.equivocations

    @property
    def approvals(self) -> int:
        return sum(v.decision == "approve" for v in self.votes.values())

    @property
    def denials(self) -> int:
        return sum(v.decision == "deny" for v in self.votes.values())

    def state(self, now: int) -> State:
        if now > self.request.not_after:
            return State.EXPIRED
        if self.approvals >= self.rule.quorum:
            return State.APPROVED
        possible = len(self.rule.approvers) - self.denials - len(self.equivocations)
        if possible < self.rule.quorum:
            return State.REJECTED
        return State.PENDING


@dataclass(frozen=True)
class Decision:
    approvals: int
    quorum: int
    policy_reasons: list[str]


def check_request(keyset: Keyset, request: Request, now: int, *, status: str = "active") -> None:
    if request.keyset_id != keyset.keyset_id:
        raise ReleaseDenied("the request is for another keyset")
    if now > request.not_after:
        raise ReleaseDenied("the request has expired")
    if request.created > now + MAX_CLOCK_SKEW:
        raise ReleaseDenied("the request is dated in the future")
    if keyset.not_after is not None and now > keyset.not_after:
        raise ReleaseDenied("the keyset has expired")
    if status not in ("active", "exposed"):
        raise ReleaseDenied(f"the keyset is {status}")


def decide_release(
    keyset: Keyset, tally: Tally, *, now: int, policy: Any,
    requester_org: str = "", requester_country: str = "", threat_level: int = 0,
    status: str = "active", in_force: bool = False,
) -> Decision:
    """Raise :class:`ReleaseDenied` unless this custodian may release for ``tally.request``.

    ``tally`` holds every vote this custodian has seen on the request, stored
    and offered as evidence alike, so an approver that voted both ways is void
    whichever vote came first. ``policy`` is a
    :class:`shardnet.protocol._policy.Policy` whose digest must be the keyset's
    policy hash, unless ``in_force``: the caller took it from the keyset's latest policy
    version, co-signed by its authorities (``_keyset_rules``).
    """
    from ._policy import RequestContext

    request = tally.request
    check_request(keyset, request, now, status=status)
    if not in_force and policy.digest != keyset.policy_hash:
        raise ReleaseDenied("the policy text does not match the keyset's policy hash")
    rule = ApprovalRule.of(keyset)
    if tally.rule != rule:
        raise ValueError("the tally was made under another keyset's approval rule")
    state = tally.state(now)
    void = f"; {len(tally.equivocations)} void for contradictory votes" if tally.equivocations else ""
    if state is State.REJECTED:
        raise ReleaseDenied(f"denied by {tally.denials} approvers{void}; quorum {rule.quorum} is out of reach")
    if state is not State.APPROVED:
        raise ReleaseDenied(f"no quorum: {tally.approvals} of {rule.quorum} approvals{void}")
    decision = policy.decide(RequestContext(
        keyset_id=keyset.id_hex, requester=request.requester, requester_org=requester_org,
        requester_country=requester_country or "ZZ", reason=request.reason, time=now,
        approvals=tally.approvals, quorum=rule.quorum, threat_level=threat_level,
    ))
    if not decision.allowed:
        why = "; ".join(decision.errors or decision.reasons) or "no permit matched"
        raise ReleaseDenied(f"policy denies the request ({why})")
    return Decision(tally.approvals, rule.quorum, list(decision.reasons))
