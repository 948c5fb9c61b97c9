"""Byzantine custodians for scenarios: nodes of this process made to lie.

Only a runtime object in a simulation's own process can be made to lie, by
replacing one of its methods on that instance or by signing with its key what
an honest node would not sign; no flag, config or wire record makes a running
node do it. The faults: a wrong partial (``lie_in_releases``), a receipt for a shard
the custodian does not keep (``lie_in_receipts``), a double vote (``contradict``) and a
forged gossip record (``forge_revocation``).
"""

from __future__ import annotations

import dataclasses
import types
from typing import TYPE_CHECKING, Any

from shardnet import protocol as p
from shardnet.node._services import Releaser
from shardnet.protocol import Request, hazmat, wire

if TYPE_CHECKING:
    from shardnet.node._runtime import NodeRuntime


def _wrong(self: Releaser, keyset: p.Keyset, req: Request, share: p.Share) -> bytes:
    wrong = dataclasses.replace(share, value=(share.value + 1) % hazmat.GROUP_ORDER)
    return Releaser._payload(self, keyset, req, wrong)


def lie_in_releases(node: NodeRuntime) -> None:
    """From now on, ``node`` releases a partial (or share) computed from a wrong share,
    with a proof that cannot match its commitment."""
    node.releaser._payload = types.MethodType(_wrong, node.releaser)  # type: ignore[method-assign]


class Forgetful:
    """The node's store, as its delivery service sees it: the shard itself goes nowhere."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_held_shard(self, *_: object, **__: object) -> None:
        pass


def lie_in_receipts(node: NodeRuntime) -> None:
    """From now on, ``node`` answers every delivery with a signed "stored" receipt, keeps the
    keyset's record (so it still votes) and drops the shard: asked for a release, it says,
    signed, that it holds no share of that keyset."""
    node.custodian.store = Forgetful(node.custodian.store)  # type: ignore[assignment]


async def contradict(node: NodeRuntime, request_id: str) -> None:
    """``node``, an approver that approved ``request_id``, also denies it: two signed votes
    that disagree (an equivocation), on the vote topic."""
    vote = p.Vote.make(node.key, node.approvals.request(request_id), "deny", node.now())
    await node.links.publish(wire.VOTE_TOPIC, vote.signed)


async def forge_revocation(node: NodeRuntime, victim: str) -> bytes:
    """``node``, no admission authority, publishes a revocation of ``victim`` that only it
    signed: well formed, validly signed, and not the network's to act on. Its bytes."""
    body = p.MemberRevocation.make_body(network_id=node.members.genesis.network_id, peer_id=victim,
                                        reason="forged", time=node.now())
    forged = p.CoSigned.propose(node.key, body)
    await node.membership.publish(forged)
    return forged.to_bytes()
