"""The node's links to other custodians, over any :class:`Transport`.

Three things every conversation needs, in one place:

* dialing a custodian at the addresses of its descriptor, with back-off per peer;
* reaching a custodian before a request (dial it unless already connected);
* never more requests in flight to one peer, on one protocol, than it serves
  at once (``max_concurrent_per_peer``), so that our own load is never
  answered BUSY by an honest peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import Descriptor, wire

from . import _transport as tx
from ._services import Directory
from ._transport import Transport

log = logging.getLogger("shardnet.node")

CONNECT_TIMEOUT = 5.0
BACKOFF_MAX = 30.0
MAX_BACKOFFS = 1024


class Links:
    def __init__(self, net: Transport, directory: Directory,
                 admits: Callable[[str], bool] = lambda peer: True) -> None:
        """``admits(peer)``: whether the network admits ``peer``; :meth:`connected` names
        only those (the membership gate closes the others' connections)."""
        self.net = net
        self.directory = directory
        self.admits = admits
        self._dial_backoff: dict[str, tuple[float, float]] = {}  # peer -> (next dial, delay), after failures
        self._churn: dict[str, tuple[float, float]] = {}  # the same, after dials the peer did not keep
        self._since: dict[str, float] = {}  # when a background dial last connected
        self._in_flight: dict[tuple[str, str], trio.CapacityLimiter] = {}  # (peer, protocol) -> slots

    def connected(self) -> list[str]:
        """Connected peers the network admits."""
        return [peer for peer in self.net.connected() if self.admits(peer)]

    def sort_connected(self) -> tuple[list[str], list[str]]:
        """Connected peers: those the network admits, and the others."""
        admitted: list[str] = []
        outsiders: list[str] = []
        for peer in self.net.connected():
            (admitted if self.admits(peer) else outsiders).append(peer)
        return admitted, outsiders

    def forget_backoff(self, peer: str) -> None:
        """``peer`` has new addresses (a restart): dial it now rather than after back-off."""
        self._dial_backoff.pop(peer, None)
        self._churn.pop(peer, None)

    async def dial(self, addr: str) -> str | None:
        try:
            return await self.net.connect(addr, CONNECT_TIMEOUT)
        except (tx.ConnectError, ValueError) as exc:
            log.debug("dial %s failed: %s", addr, exc)
            return None

    async def dial_custodian(self, d: Descriptor, *, background: bool = False) -> bool:
        """Dial a custodian at its descriptor's addresses, with per-peer back-off after
        failures. ``background`` (the peers loop keeping its connections up): a dial that
        connects backs off too, until the connection is seen to last (:meth:`kept`), so a
        peer that drops us at once (it does not admit us yet, or it is full) is not dialed
        again every round. A dial for a request (:meth:`reach`) ignores that back-off."""
        now = trio.current_time()
        if now < self._dial_backoff.get(d.peer_id, (0.0, 0.0))[0]:
            return False
        if background and now < self._churn.get(d.peer_id, (0.0, 0.0))[0]:
            return False
        for addr in d.addrs:
            if await self.dial(addr if "/p2p/" in addr else f"{addr}/p2p/{d.peer_id}"):
                self._dial_backoff.pop(d.peer_id, None)
                if background:
                    delay = min(BACKOFF_MAX, self._churn.get(d.peer_id, (0.0, 0.25))[1] * 2)
                    self._churn[d.peer_id] = (trio.current_time() + delay, delay)
                    self._since[d.peer_id] = trio.current_time()
                return True
        delay = min(BACKOFF_MAX, self._dial_backoff.get(d.peer_id, (0.0, 0.5))[1] * 2)
        self._dial_backoff[d.peer_id] = (trio.current_time() + delay, delay)
        self._prune(self._dial_backoff)
        return False

    def kept(self, peers: Iterable[str]) -> None:
        """These peers are still connected: a connection that lasted ``BACKOFF_MAX`` ends
        the back-off (one dropped earlier is dialed later, and later again)."""
        if self._churn:
            now = trio.current_time()
            for peer in peers:
                if peer in self._churn and now - self._since.get(peer, now) >= BACKOFF_MAX:
                    del self._churn[peer]
                    self._since.pop(peer, None)
            self._prune(self._churn)
            for peer in [x for x in self._since if x not in self._churn]:
                del self._since[peer]

    @staticmethod
    def _prune(backoff: dict[str, tuple[float, float]]) -> None:
        """Forget back-offs long over: at most a few per peer ever seen, not per dial."""
        if len(backoff) > MAX_BACKOFFS:
            now = trio.current_time()
            for peer in [x for x, (due, _) in backoff.items() if due + BACKOFF_MAX < now]:
                del backoff[peer]

    async def reach(self, peer: str, protocol: str) -> None:
        """Make sure we have a connection to ``peer`` (dialing its descriptor's addresses)."""
        if peer in self.connected():
            return
        d = self.directory.get(peer)
        if d is None or not await self.dial_custodian(d):
            raise tx.StreamOpenError(peer, protocol, "custodian unreachable")

    async def request(self, peer: str, proto: wire.StreamProtocol, payload: bytes) -> bytes:
        """One request to ``peer``, with never more of them in flight than it serves at once."""
        key = (peer, proto.id)
        limiter = self._in_flight.get(key)
        if limiter is None:
            limiter = self._in_flight[key] = trio.CapacityLimiter(proto.max_concurrent_per_peer)
        try:
            async with limiter:
                return await self.net.request(peer, proto, payload, wire.REQUEST_TIMEOUT)
        finally:
            if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
                self._in_flight.pop(key, None)

    async def reach_and_request(self, peer: str, proto: wire.StreamProtocol, payload: bytes) -> bytes:
        await self.reach(peer, proto.id)
        return await self.request(peer, proto, payload)

    async def pull(self, peer: str, proto: wire.StreamProtocol, body: bytes = wire.PULL) -> Any:
        """One pull request (directory or sync), decoded; None if it failed (pulls are best effort)."""
        try:
            reply = await self.request(peer, proto, body)
            return p.decode(reply, max_size=proto.max_reply, max_items=8192)
        except (tx.RequestError, p.ShardnetError) as exc:
            log.debug("%s pull from %s failed: %s", proto.id, peer, exc)
            return None

    async def publish(self, topic: wire.Topic, data: bytes) -> None:
        """Best effort: the pull protocols carry every gossiped record too."""
        try:
            await self.net.publish(topic, data)
        except Exception as exc:
            log.debug("publish on %s failed: %r", topic, exc)
