"""Membership on the wire: its topic, its pulls, and the gate that keeps outsiders out.

* the membership topic carries co-signed records (certificates, revocations,
  proposals); the validator verifies every signature against the genesis;
* a pull (``wire.MEMBERSHIP``, a summary out, what is missing back) comes
  before every directory pull, so a node that just joined knows who is
  admitted before it judges their descriptors;
* the gate: a connected peer that is neither admitted nor an authority gets
  one membership pull (it may bring the certificate that admits it, and a
  newly admitted node's certificate may not have reached us yet), then the
  connection is closed. Until then it can reach no protocol but that pull,
  and its gossip is refused by every validator. A revoked peer is cut off as
  at the next pass of the peers loop (every 0.5 s; plus at most ``JUDGE_TIMEOUT`` s
  for its one pull) after the revocation is applied. The peers loop tells the gate
  (:meth:`MembershipLoops.gate`) whom it found connected but not admitted, so the
  connected peers are sorted once per pass, not twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from shardnet import protocol as p
from shardnet.protocol import wire

from . import _transport as tx
from ._clock import Clock
from ._links import Links
from ._members import Members
from ._transport import Subscription, drain

log = logging.getLogger("shardnet.node")

#: Seconds before a peer that was refused gets another membership pull on connecting.
RETRY_OUTSIDER = 60.0
#: Seconds the membership pull of a peer that is not admitted may take: the gate does not
#: wait on it, and a peer that never answers is cut off after this long.
JUDGE_TIMEOUT = 3.0
#: Seconds between two sweeps of expired proposals.
EXPIRE_EVERY = 3600.0


class MembershipLoops:
    def __init__(self, members: Members, links: Links, clock: Clock,
                 on_admitted: Callable[[str], None]) -> None:
        self.members = members
        self.links = links
        self.clock = clock
        self.on_admitted = on_admitted
        self._outsiders: dict[str, float] = {}  # peer -> when we last gave it a pull
        self._judging: set[str] = set()  # peers being judged or cut off
        # Peers to judge ("!peer": to cut off); at most one entry per connected peer.
        self._jobs, self._job_queue = trio.open_memory_channel[str](math.inf)
        self._expired_at = 0.0

    def now(self) -> int:
        return int(self.clock())

    def validate(self, author: str, data: bytes) -> bool:
        """Verified against the genesis; news only (see ``Members.check``), except what we
        publish ourselves, which we hold already by the time it goes out."""
        if author == self.members.peer_id:
            return True
        try:
            self.members.check(data, self.now())
            return True
        except (p.ShardnetError, ValueError):
            return False

    def accept(self, data: bytes) -> None:
        try:
            outcome = self.members.accept(data, self.now())
        except (p.ShardnetError, ValueError) as exc:
            log.info("membership record refused: %s", exc)
            return
        if outcome != "applied":
            return
        cs, rec = self.members.check(data, self.now())
        if isinstance(rec, p.Admission):
            log.info("admitted: %s (%s, %s) as %s", rec.name, rec.org, rec.country, ",".join(rec.roles))
            self.on_admitted(rec.peer_id)
        else:
            log.info("membership of %s revoked: %s", rec.peer_id, rec.reason)

    async def drain(self, sub: Subscription) -> None:
        await drain(sub, self.accept)

    async def publish(self, cs: p.CoSigned) -> None:
        await self.links.publish(wire.MEMBERSHIP_TOPIC, cs.to_bytes())

    async def pull_from(self, peer: str) -> None:
        items = await self.links.pull(peer, wire.MEMBERSHIP, self.members.summary())
        for item in items if isinstance(items, list) else []:
            if isinstance(item, bytes):
                self.accept(item)

    def serve_pull(self, remote: str, frame: bytes) -> bytes:
        if not self.members.may_connect(remote, self.now()):
            raise tx.RequestRejected(f"not admitted to network {self.members.prefix}")
        try:
            return self.members.pull_reply(frame)
        except p.ShardnetError as exc:
            raise tx.RequestRejected(str(exc)) from None

    async def _judge(self, peer: str) -> None:
        try:
            with trio.move_on_after(JUDGE_TIMEOUT):
                await self.pull_from(peer)
            if not self.members.may_connect(peer, self.now()):
                log.info("closing the connection of %s: not admitted to network %s", peer, self.members.prefix)
                await self.links.net.disconnect(peer)
        finally:
            self._judging.discard(peer)

    def gate(self, outsiders: list[str]) -> None:
        """Told, at every pass of the peers loop, which connected peers are neither admitted
        nor authorities: each gets one bounded membership pull (judged in the background,
        never waited for) and is then cut off; one refused in the last ``RETRY_OUTSIDER`` s
        is cut off at once."""
        now = trio.current_time()
        for peer in outsiders:
            if peer in self._judging:
                continue
            self._judging.add(peer)
            if now - self._outsiders.get(peer, -RETRY_OUTSIDER) >= RETRY_OUTSIDER:
                self._outsiders[peer] = now
                self._jobs.send_nowait(peer)
            else:
                self._jobs.send_nowait("!" + peer)  # refused lately: no second pull
        if len(self._outsiders) > 4096:
            self._outsiders = {k: t for k, t in self._outsiders.items() if now - t < RETRY_OUTSIDER}
        if now - self._expired_at >= EXPIRE_EVERY:
            self._expired_at = now
            self.members.expire_proposals(self.now())

    async def _cut(self, peer: str) -> None:
        try:
            await self.links.net.disconnect(peer)
        finally:
            self._judging.discard(peer)

    async def gate_loop(self) -> None:
        """Carry out what :meth:`gate` decided, each job in the background."""
        async with trio.open_nursery() as n:
            async for job in self._job_queue:
                if job.startswith("!"):
                    n.start_soon(self._cut, job[1:])
                else:
                    n.start_soon(self._judge, job)
