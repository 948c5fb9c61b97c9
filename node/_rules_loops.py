"""Keyset rules on the wire: their topics, their pulls and the hand-over of proposals.

* ``wire.POLICY_TOPIC`` and ``wire.REVOCATION_TOPIC`` carry complete records;
  the validator is ``Rules.check`` (a node that does not know the keyset refuses,
  and so does not relay, what it cannot check); ``wire.RULES_BATCH_TOPIC`` carries
  many at once (a revocation of many keysets), relayed as ``validate_batch`` says;
* ``wire.RULES`` "propose": a proposal goes to every other authority of its
  keyset, which keeps it for its operator's ``shardnet sign``;
* ``wire.RULES`` "pull": anti-entropy, every ``wire.RULES_PULL_EVERY`` s from a
  peer that knows one of our keysets (an authority, the owner, a holder or an
  approver of it), and from every peer newly connected: a node that was away
  converges when it is back.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import CoSigned, batches, wire
from shardnet.protocol import epoch_records as er
from shardnet.protocol import keyset_rules as kr

from . import _transport as tx
from ._clock import Clock, Rng
from ._epoch_view import keyset_view
from ._links import Links
from ._rules import Rules, TooManyVersions, UnknownKeyset
from ._transport import Subscription, drain

log = logging.getLogger("shardnet.node")

TOPICS = {"policy": wire.POLICY_TOPIC, "revocations": wire.REVOCATION_TOPIC}
#: Seconds after start before the first rules pull (the peers loop has dialled by then).
FIRST_PULL_AFTER = 2.0


def rules_frame(ask: str, body: Any) -> bytes:
    return p.encode([wire.RULES_FRAME_TAG, 1, ask, body])


class RulesLoops:
    def __init__(self, rules: Rules, links: Links, clock: Clock, rng: Rng) -> None:
        self.rules = rules
        self.links = links
        self.clock = clock
        self.rng = rng
        self._knowing: set[str] = set()  # peers that know one of our keysets, as of the last pass
        self._keysets_of: dict[str, list[str]] = {}  # and which ones each knows

    def now(self) -> int:
        return int(self.clock())

    # -- gossip ---------------------------------------------------------------------

    def validate(self, author: str, data: bytes) -> bool:
        if author == self.rules.peer_id:
            return True
        try:
            self.rules.check(data, self.now())
            return True
        except (p.ShardnetError, ValueError):
            return False

    def accept(self, data: bytes) -> None:
        try:
            outcome = self.rules.accept(data, self.now())
        except kr.StaleRule:
            return
        except (p.ShardnetError, ValueError) as exc:
            log.info("keyset rule record refused: %s", exc)
            return
        if outcome == "applied":
            rec = kr.parse_body(CoSigned.restore(data, max_size=kr.MAX_RULE_RECORD).body, trusted=True)
            log.info("%s version %d of keyset %s in force", rec.kind, rec.version, rec.keyset_id.hex())

    async def drain(self, sub: Subscription) -> None:
        await drain(sub, self.accept)

    def validate_batch(self, author: str, data: bytes) -> bool:
        """A rules batch is relayed when one of its records at least is news here and verified,
        each other one is the record in force here (the same body) or of a keyset this node
        does not know (which it cannot check), and none is there twice. So a batch carries
        unchecked bytes only as records of keysets this node does not know, no more than the
        message holds, and only alongside news that K authorities signed."""
        if author == self.rules.peer_id:
            return True
        try:
            records = batches.parse_rules_batch(data)
        except p.ShardnetError:
            return False
        if len(set(records)) != len(records):
            return False
        news = False
        for record in records:
            try:
                self.rules.check(record, self.now())
                news = True
            except UnknownKeyset:
                continue
            except (kr.StaleRule, TooManyVersions):
                if not self._in_force_here(record):
                    return False
            except (p.ShardnetError, ValueError):
                return False
        return news

    def _in_force_here(self, record: bytes) -> bool:
        try:
            seen = kr.peek(record)
        except p.ShardnetError:
            return False
        book = self.rules.book(seen.keyset_id.hex())
        held = book.held(seen.kind) if book is not None else None
        return held is not None and held[0].body == seen.body

    def accept_batch(self, data: bytes) -> None:
        try:
            records = batches.parse_rules_batch(data)
        except p.ShardnetError:
            return
        for record in records:
            self.accept(record)

    async def drain_batches(self, sub: Subscription) -> None:
        await drain(sub, self.accept_batch)

    async def spread_applied(self, records: list[CoSigned]) -> None:
        """Publish records now in force: one alone on its topic (as a node of an earlier
        version reads it), more in as few rules batches as they fit (one too large for a
        batch alone on its topic)."""
        data = [cs.to_bytes() for cs in records]
        fit = [d for d in data if batches.fits_rules_batch(d)]
        alone = [d for d in data if not batches.fits_rules_batch(d)] if len(fit) > 1 else data
        for one in alone:
            rec = kr.parse_body(CoSigned.restore(one, max_size=kr.MAX_RULE_RECORD).body, trusted=True)
            await self.links.publish(TOPICS[rec.kind], one)
        if len(fit) > 1:
            for message in batches.rules_batches(fit):
                await self.links.publish(wire.RULES_BATCH_TOPIC, message)

    async def spread(self, cs: CoSigned, outcome: str) -> None:
        """Publish what is now in force; hand a proposal to the keyset's other authorities."""
        rec = kr.parse_body(cs.body, trusted=True)
        if outcome == "applied":
            await self.spread_applied([cs])
            return
        book = self.rules.book(rec.keyset_id.hex())
        if book is None:
            return
        frame = rules_frame("propose", cs.to_bytes())
        async with trio.open_nursery() as n:
            for peer in book.rule.peers:
                if peer != self.rules.peer_id:
                    n.start_soon(self._hand, peer, frame)

    async def _hand(self, peer: str, frame: bytes) -> None:
        try:
            with trio.move_on_after(wire.REQUEST_TIMEOUT):
                await self.links.reach_and_request(peer, wire.RULES, frame)
        except tx.RequestError as exc:
            log.info("could not hand a rules proposal to %s: %s (it gets it from the next proposal or sign)",
                     peer, exc)

    # -- the stream -----------------------------------------------------------------

    async def serve(self, remote: str, frame: bytes) -> bytes:
        try:
            ask, body = p.decode_record(frame, wire.RULES_FRAME_TAG, 1, 2, max_size=wire.RULES.max_request)
            if ask not in wire.RULES_ASKS:
                raise p.MalformedEncoding(f"unknown rules ask {str(ask)[:20]!r}")
            if ask == "pull":
                return p.encode(self.rules.pull_reply(body, remote))
            data = p.want_bytes(body, "proposal")
            if self.rules.accept(data, self.now()) == "applied":  # complete with what we held: spread it
                await self.spread_applied([self.rules.completed(CoSigned.restore(data, max_size=kr.MAX_RULE_RECORD))])
            return b"ok"
        except kr.StaleRule:
            return b"ok"
        except (p.ShardnetError, ValueError) as exc:
            raise tx.RequestRejected(str(exc)) from None

    # -- anti-entropy ---------------------------------------------------------------

    def _peers(self) -> list[str]:
        """Peers that know one of our keysets (whose rules they can give us); and which ones
        each knows (``_keysets_of``: a pull names those only)."""
        of: dict[str, list[str]] = {}
        for keyset_id in self.rules.known_keysets():
            view = keyset_view(self.rules.store, keyset_id)
            if view is None:
                continue
            peers = {*er.AuthorityRule.of(view).peers, p.peer_id_of(view.owner), *view.approvers,
                     *(h for hs in er.holders_of(view).values() for h in hs)}
            for peer in peers - {self.rules.peer_id}:
                of.setdefault(peer, []).append(keyset_id)
        self._keysets_of = of
        return sorted(of)

    async def pull_from(self, peer: str) -> int:
        """One pull from ``peer`` (of the keysets it knows); the records it brought that are
        now in force here."""
        summary = self.rules.summary(self._keysets_of.get(peer))
        if not summary:
            return 0
        items = await self.links.pull(peer, wire.RULES, rules_frame("pull", summary))
        applied = 0
        for item in items if isinstance(items, list) else []:
            if isinstance(item, bytes):
                try:
                    applied += self.rules.accept(item, self.now()) == "applied"
                except (p.ShardnetError, ValueError):
                    continue
        return applied

    async def on_new_peer(self, peer: str) -> None:
        """A peer just connected: pull from it if it knows one of our keysets."""
        if peer in self._knowing:
            await self.pull_from(peer)

    async def pull_loop(self) -> None:
        await trio.sleep(FIRST_PULL_AFTER)
        while True:
            knowing = self._peers()
            self._knowing = set(knowing)
            connected = set(self.links.connected())
            peers = [x for x in knowing if x in connected] or knowing
            if peers:
                peer = peers[int.from_bytes(self.rng(4), "big") % len(peers)]
                try:
                    with trio.move_on_after(2 * wire.REQUEST_TIMEOUT):
                        if peer not in self.links.connected():
                            await self.links.reach(peer, wire.RULES.id)
                        await self.pull_from(peer)
                except tx.RequestError as exc:
                    log.debug("rules pull from %s failed: %s", peer, exc)
            self.rules.expire_proposals(self.now())
            await self.hand_outgoing()
            await trio.sleep(wire.RULES_PULL_EVERY)

    async def hand_outgoing(self) -> None:
        """Hand round the proposals this node made by itself (revocations proposed again)."""
        while self.rules.outgoing:
            await self.spread(self.rules.outgoing.pop(0), "proposal")
