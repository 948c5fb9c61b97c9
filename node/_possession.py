"""Proofs of possession on the owner's side: before a custodian's first shard.

A custodian must show that it holds the HPKE private keys its admission names
(``protocol/_possession.py``) before the owner sends it a shard: once per
admission, so a renewal with new keys is checked again. The outcome is kept in
the store (``possession_mark``), with an audit entry; a custodian that fails
is named there and in the slot's error, receives nothing, and is no placement
candidate while that admission stands. A custodian that cannot be reached is
asked again at the next attempt; nothing is recorded for it.
"""

from __future__ import annotations

import logging

from shardnet import protocol as p
from shardnet.protocol import wire

from . import _transport as tx
from ._clock import Clock, Rng
from ._links import Links
from ._members import Members
from ._services import possession_mark
from ._store import Store

log = logging.getLogger("shardnet.node")


class Possession:
    def __init__(self, store: Store, members: Members, links: Links, key: p.Signer, rng: Rng, clock: Clock,
                 me: str) -> None:
        self.store = store
        self.members = members
        self.links = links
        self.key = key
        self.rng = rng
        self.clock = clock
        self.me = me

    async def failure(self, peer: str) -> str | None:
        """None once ``peer`` has proven it holds every key of its current admission (or is
        us); otherwise why not. Raises RequestError when it could not be asked."""
        now = int(self.clock())
        a = self.members.admission(peer, now, "custodian")
        if a is None:
            return f"the custodian is not admitted ({self.members.view.state(peer, now)})"
        if peer == self.me:
            return None
        mark = possession_mark(peer, a)
        known = self.store.get_kv(mark)
        if known is not None:
            return None if known == b"ok" else known.decode()
        for kem, public in a.hpke:
            ch = p.possession.Challenge.make(kem, public, challenger=self.me, rng=self.rng)
            try:
                reply = await self.links.reach_and_request(peer, wire.POSSESSION, ch.frame)
                ch.check(reply, custodian=peer, challenger=self.me)
            except tx.RemoteError as exc:
                if exc.status in (tx.ReplyStatus.BUSY, tx.ReplyStatus.TIMEOUT):
                    raise
                return self._failed(peer, a, kem, f"it answered the {kem} challenge with an error: {exc.reason}",
                                    now)
            except p.possession.PossessionFailed as exc:
                return self._failed(peer, a, kem, str(exc), now)
        self.store.put_kv(mark, b"ok")
        self.store.append_audit("possession", {"custodian": peer, "kems": list(a.kems),
                                               "admission": a.id.hex()}, now, self.key)
        return None

    def _failed(self, peer: str, a: p.Admission, kem: str, why: str, now: int) -> str:
        reason = f"failed the proof of possession of its {kem} key: {why}"[:400]
        log.warning("custodian %s %s", peer, reason)
        with self.store.transaction():
            self.store.put_kv(possession_mark(peer, a), reason.encode())
            self.store.append_audit("possession-failed", {"custodian": peer, "kem": kem, "admission": a.id.hex(),
                                                          "reason": reason}, now, self.key)
        return reason
