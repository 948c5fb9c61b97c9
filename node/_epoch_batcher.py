"""Epoch asks to one peer, sent together (``protocol/_batches.py``).

The rounds a node coordinates at once (the autopilot's, after a custodian that
holds shares of many keysets is revoked) each ask the same peers for deals,
echoes, co-signatures and commit receipts. :class:`EpochBatcher` queues the asks
per peer and keeps one request in flight to each: what queued meanwhile goes as
one batch (up to ``MAX_EPOCH_BATCH`` frames within the request cap), so that a
thousand rounds are not a thousand requests to each peer, serialised by its
limit of requests in progress. An ask alone goes as a plain frame; a peer that
refuses batches (a node of an earlier version) gets every frame alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from shardnet import protocol as p
from shardnet.protocol import batches, wire

from . import _transport as tx
from ._links import Links

log = logging.getLogger("shardnet.node")
#: Seconds a peer that refused a batch gets its frames one by one (then it is tried again: it
#: may have been upgraded).
ALONE_FOR = 3600.0


@dataclass(eq=False)
class _Ask:
    frame: bytes
    done: trio.Event = field(default_factory=trio.Event)
    reply: bytes = b""
    error: tx.RequestError | None = None
    wanted: bool = True  # False once its round stopped waiting: not sent if still queued


class EpochBatcher:
    def __init__(self, links: Links) -> None:
        self.links = links
        self._queues: dict[str, list[_Ask]] = {}
        self._sending: set[str] = set()
        self._alone: dict[str, float] = {}  # peers that refused a batch: frames go one by one until then
        self._nursery: trio.Nursery | None = None
        #: Requests sent, and the frames they carried (a benchmark's and a test's figures).
        self.requests = 0
        self.frames = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def request(self, peer: str, frame: bytes) -> bytes:
        """What ``peer`` answers to one epoch frame; raises as ``Links.request`` does."""
        ask = _Ask(frame)
        if self._nursery is None:  # not running (an offline command): no one to batch with
            await self._one(peer, ask)
        else:
            self._queues.setdefault(peer, []).append(ask)
            if peer not in self._sending:
                self._sending.add(peer)
                self._nursery.start_soon(self._send_all, peer)
            try:
                await ask.done.wait()
            finally:
                ask.wanted = False
        if ask.error is not None:
            raise ask.error
        return ask.reply

    async def _send_all(self, peer: str) -> None:
        try:
            await trio.lowlevel.checkpoint()  # the other rounds of this scheduling pass queue theirs
            queue = self._queues.get(peer, [])
            while queue:
                queue[:] = [a for a in queue if a.wanted]
                taken: list[_Ask] = []
                while queue and (not taken or (len(taken) < batches.MAX_EPOCH_BATCH and batches.batch_fits(
                        [len(a.frame) for a in taken], len(queue[0].frame)))):
                    taken.append(queue.pop(0))
                if taken:
                    later: list[_Ask] = []
                    try:
                        later = await self._send(peer, taken)
                    finally:  # cancelled in flight (the node stops): no ask it took waits on
                        back = set(later)
                        self._fail([a for a in taken if not a.done.is_set() and a not in back],
                                   tx.RequestError(peer, wire.EPOCH.id, "the node stopped before the answer came"))
                    queue[:0] = later
                await trio.lowlevel.checkpoint()
        finally:
            self._sending.discard(peer)
            left = self._queues.pop(peer, [])
            # Only if this sender stopped early (the node stops): no ask waits for a sender gone.
            self._fail(left, tx.RequestError(peer, wire.EPOCH.id, "the node stopped before it sent this ask"))

    async def _send(self, peer: str, asks: list[_Ask]) -> list[_Ask]:
        """Send ``asks`` and settle each; the ones the peer left for later."""
        if len(asks) == 1 or self._alone.get(peer, -math.inf) > trio.current_time():
            async with trio.open_nursery() as nursery:
                for ask in asks:
                    nursery.start_soon(self._one, peer, ask)
            return []
        self.requests += 1
        self.frames += len(asks)
        try:
            reply = await self.links.reach_and_request(peer, wire.EPOCH, batches.epoch_batch([a.frame for a in asks]))
            answers = batches.parse_epoch_batch_reply(reply, len(asks))
        except tx.RemoteError as exc:
            if exc.reason.startswith("malformed epoch frame"):  # it knows no batches
                log.info("%s does not take epoch batches: sending its frames one by one", peer)
                self._alone[peer] = trio.current_time() + ALONE_FOR
                return asks
            return self._fail(asks, exc)
        except tx.RequestError as exc:
            return self._fail(asks, exc)
        except p.ShardnetError as exc:
            return self._fail(asks, tx.RequestError(peer, wire.EPOCH.id, f"a malformed batch reply: {exc}"))
        later = []
        for ask, (status, body) in zip(asks, answers, strict=True):
            if status is batches.Status.OK:
                ask.reply = body
            elif status is batches.Status.REFUSED:
                ask.error = tx.RemoteError(peer, wire.EPOCH.id, tx.ReplyStatus.REJECTED,
                                           body.decode("utf-8", "replace"))
            else:
                later.append(ask)
                continue
            ask.done.set()
        return later

    async def _one(self, peer: str, ask: _Ask) -> None:
        self.requests += 1
        self.frames += 1
        try:
            ask.reply = await self.links.reach_and_request(peer, wire.EPOCH, ask.frame)
        except tx.RequestError as exc:
            ask.error = exc
        ask.done.set()

    @staticmethod
    def _fail(asks: list[_Ask], exc: tx.RequestError) -> list[_Ask]:
        for ask in asks:
            ask.error = exc
            ask.done.set()
        return []
