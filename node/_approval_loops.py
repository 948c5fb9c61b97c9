"""Reconstruction requests and votes, by gossip and by pull.

Requests and votes are gossiped on their topics; a peer we connect to (and a
few peers every few seconds, see ``_directory_loops``) is also asked for every
open request and its votes over the sync protocol, because gossip is lossy and
a node that was offline missed it. Whatever the path, every record goes
through :class:`Approvals`, which checks and stores it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import Added, Request, Vote, wire

from ._clock import Clock
from ._links import Links
from ._services import Approvals
from ._transport import Subscription, Validator, drain

log = logging.getLogger("shardnet.node")


def signed_by_author(parse: Callable[[bytes], Request | Vote]) -> Validator:
    """A topic validator: the record parses and its signer is the peer that sent it."""
    def check(author: str, data: bytes) -> bool:
        try:
            rec = parse(data)
        except (p.ShardnetError, ValueError):
            return False
        who = rec.requester if isinstance(rec, Request) else rec.approver
        return bool(who == author)
    return check


class ApprovalLoops:
    def __init__(self, approvals: Approvals, links: Links, clock: Clock) -> None:
        self.approvals = approvals
        self.links = links
        self.clock = clock
        self.votes_changed = trio.Event()

    def wake_voters(self) -> None:
        """Wake every task waiting for a vote (a reconstruction's release round)."""
        self.votes_changed.set()
        self.votes_changed = trio.Event()

    def accept_request(self, data: bytes) -> None:
        try:
            req = self.approvals.accept_request(data, int(self.clock()))
        except (p.ShardnetError, ValueError) as exc:
            log.info("request refused: %s", exc)
            return
        if req is not None:
            log.info("reconstruction request %s for keyset %s from %s (%s): %s", req.id,
                     req.keyset_id.hex()[:12], req.requester, req.mode, req.reason)

    def accept_vote(self, data: bytes) -> None:
        try:
            vote = self.approvals.accept_vote(data, int(self.clock()))
        except (p.ShardnetError, ValueError, LookupError) as exc:
            log.info("vote refused: %s", exc)
            return
        if vote is None:
            return
        v, added = vote
        if added is Added.EQUIVOCATION:
            log.warning("approver %s signed contradicting votes on request %s: it is void there",
                        v.approver, v.request_id)
        else:
            log.info("vote %s on request %s from %s", v.decision, v.request_id, v.approver)
        self.wake_voters()

    async def drain_requests(self, sub: Subscription) -> None:
        await drain(sub, self.accept_request)

    async def drain_votes(self, sub: Subscription) -> None:
        await drain(sub, self.accept_vote)

    async def sync_from(self, peer: str) -> None:
        items: Any = await self.links.pull(peer, wire.SYNC)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes):
                try:
                    self.accept_request(item[0])
                    for v in item[1] if isinstance(item[1], list) else []:
                        if isinstance(v, bytes):
                            self.accept_vote(v)
                except Exception:  # as in drain: a peer's bad record never stops the node
                    log.exception("dropping a synced record that could not be processed")
