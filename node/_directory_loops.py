"""The directory's background loops: who the custodians are and how to reach them.

* publish our signed descriptor at start and every ``republish_every`` s
  (``REPUBLISH``: ten times within a descriptor's TTL, ``wire.DESCRIPTOR_TTL``). The
  same signed bytes go out again unless our addresses changed or they are
  ``RESIGN_EVERY`` s old: a peer that holds them already pays a hash for them,
  not a signature check, so republishing costs the network O(N²) hashes per
  round rather than O(N²) verifications;
* drain the directory topic;
* pull the directory (and the approvals, through ``on_new_peer``) of peers we
  connect to: of at most ``NEW_PEER_PULLS`` new peers (chosen at random) per
  ``PULL_EVERY`` s window, and every ``PULL_EVERY`` s of two connected peers
  chosen at random (anti-entropy, because gossip is lossy), which in time
  reaches the new peers left over too. A node that joins a network of N does
  not pull from each of the dozens of peers it connects to at once, and each
  pull carries a summary, so one in step costs O(N) integers, not N
  descriptors;
* dial custodians we learn about, up to ``MAX_PEERS`` connections; with no
  connection at all, dial the bootstrap addresses again every ``REBOOTSTRAP`` s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import Descriptor, wire

from . import _transport as tx
from ._clock import Clock, Rng
from ._links import Links
from ._services import Directory, NotAdmitted
from ._transport import Subscription, drain

log = logging.getLogger("shardnet.node")

REPUBLISH = 60.0
RESIGN_EVERY = 1800.0
PULL_EVERY = 5.0
NEW_PEER_PULLS = 4
MAX_PEERS = 32
REBOOTSTRAP = 10.0


def pick(rng: Rng, items: list[str], k: int) -> list[str]:
    """Up to k of ``items``, chosen with ``rng``."""
    pool, out = list(items), list[str]()
    while pool and len(out) < k:
        out.append(pool.pop(int.from_bytes(rng(4), "big") % len(pool)))
    return out


class DirectoryLoops:
    def __init__(self, directory: Directory, links: Links, *, describe: Callable[[int], Descriptor],
                 clock: Clock, rng: Rng, bootstrap: list[str],
                 on_readdressed: Callable[[str], None],
                 on_new_peer: Callable[[str], Awaitable[None]],
                 first_pull: Callable[[str], Awaitable[None]] | None = None,
                 on_outsiders: Callable[[list[str]], None] | None = None,
                 member: Callable[[], bool] = lambda: True,
                 on_connected: Callable[[str], None] = lambda peer: None) -> None:
        """``describe(seq)`` signs our descriptor; ``on_readdressed(peer)`` is told when a
        custodian comes back at new addresses; ``on_new_peer(peer)`` is the other pulls
        to make of a peer along with its directory; ``first_pull(peer)`` the one to make
        before them (membership: who is admitted decides which descriptors count);
        ``on_outsiders(peers)``, at every pass, the connected peers the network does not
        admit (the membership gate); ``member()``, whether the network admits us now: a
        node it does not only dials its bootstrap peers (every ``REBOOTSTRAP`` seconds
        while alone), since custodians would drop it anyway. ``on_connected(peer)``: an
        admitted peer we were not connected to is now (within the loop's half second),
        so what waits for it need not wait out a back-off meant for a dead peer."""
        self.directory = directory
        self.member = member
        self.links = links
        self.describe = describe
        self.clock = clock
        self.rng = rng
        self.bootstrap = bootstrap
        self.on_connected = on_connected
        self.on_readdressed = on_readdressed
        self.on_new_peer = on_new_peer
        self.first_pull = first_pull
        self.on_outsiders = on_outsiders
        self.republish_every = REPUBLISH
        self._pulled: set[str] = set()
        self._mine: Descriptor | None = None
        self.has_peers = trio.Event()  # set at the first connection the peers loop sees
        self.became_member = trio.Event()  # set by the peers loop when the network admits us

    def publish_self(self) -> Descriptor:
        """Our descriptor, signed anew when needed (see the module docstring). Its seq
        is the time in ms, and always above the seq of the one held before, so that a
        clock stepped back cannot leave the old addresses in place."""
        d, now = self._mine, self.clock()
        me = self.directory.me
        if (d is None or d.addrs != tuple(self.links.net.listen_addrs)
                or now - d.seq / 1000 >= RESIGN_EVERY or self.directory.held_from(d.signed) != me):
            # Above the one held, but never beyond what peers accept as not from the future.
            newest_ok = (int(now) + wire.MAX_CLOCK_SKEW) * 1000
            seq = max(int(now * 1000), min(self.directory.seq_of(me) + 1, newest_ok))
            d = self._mine = self.describe(seq)
            try:
                self.directory.accept(d.signed, int(now))
            except (p.ShardnetError, ValueError) as exc:  # cannot happen with the seq above
                log.warning("our own descriptor was refused: %s", exc)
        return d

    async def publish_loop(self) -> None:
        """Gossip our descriptor once we have peers to gossip to, again when the mesh has
        grown (``PULL_EVERY`` s later), then every ``republish_every`` s; and the same two
        again as soon as the network admits us (before that, members drop what we gossip)."""
        with trio.move_on_after(self.republish_every):
            await self.has_peers.wait()
        while True:
            await self.links.publish(wire.DIRECTORY_TOPIC, self.publish_self().signed)
            await trio.sleep(min(PULL_EVERY, self.republish_every))
            while not self.became_member.is_set():
                await self.links.publish(wire.DIRECTORY_TOPIC, self.publish_self().signed)
                with trio.move_on_after(self.republish_every):
                    await self.became_member.wait()
            self.became_member = trio.Event()

    def validate(self, author: str, data: bytes) -> bool:
        """The topic validator: a descriptor signed by the peer that sent it, not from the future."""
        held = self.directory.held_from(data)
        if held is not None:  # verified when it first came, and not from the future then
            return held == author
        try:
            d = self.directory.parse(data)
            if d.peer_id != author:
                return False
            return d.seq <= (self.clock() + wire.MAX_CLOCK_SKEW) * 1000
        except (p.ShardnetError, ValueError):
            return False

    def accept(self, data: bytes) -> None:
        if self.directory.held_from(data) is not None:
            self.directory.heard(data, int(self.clock()))
            return  # a hash, not a parse: the common case once the directory has converged
        try:
            before = self.directory.get(self.directory.parse(data).peer_id)
            d = self.directory.accept(data, int(self.clock()))
        except NotAdmitted as exc:  # any outsider can send many: not worth a line each
            log.debug("descriptor refused: %s", exc)
            return
        except (p.ShardnetError, ValueError) as exc:
            log.info("descriptor refused: %s", exc)
            return
        if d is None:
            return
        if before is None:
            log.info("custodian %s (%s) %s", d.name, d.country, d.peer_id)
        if before is None or before.addrs != d.addrs:
            self.links.forget_backoff(d.peer_id)
            self.on_readdressed(d.peer_id)

    async def drain(self, sub: Subscription) -> None:
        await drain(sub, self.accept)

    async def pull_from(self, peer: str) -> None:
        """Pull what we lack of ``peer``'s directory; all of it from a peer from before
        ``DIRECTORY_DELTA``."""
        try:
            reply = await self.links.request(peer, wire.DIRECTORY_DELTA, self.directory.summary())
            items = p.decode(reply, max_size=wire.DIRECTORY_DELTA.max_reply, max_items=wire.DIRECTORY_PULL_MAX)
        except tx.StreamOpenError:
            items = await self.links.pull(peer, wire.DIRECTORY)
        except (tx.RequestError, p.ShardnetError) as exc:
            log.debug("directory pull from %s failed: %s", peer, exc)
            return
        for item in items if isinstance(items, list) else []:
            if isinstance(item, bytes):
                self.accept(item)

    async def _pull_all(self, peer: str) -> None:
        if self.first_pull is not None:
            await self.first_pull(peer)
        async with trio.open_nursery() as n:
            n.start_soon(self.pull_from, peer)
            n.start_soon(self.on_new_peer, peer)

    async def _dial_kept(self, d: Descriptor) -> None:
        await self.links.dial_custodian(d, background=True)

    async def peers_loop(self) -> None:
        """Bootstrap, then keep connected to known custodians and pull from them."""
        last_pull, window, new_pulls, last_boot = 0.0, -PULL_EVERY, 0, -REBOOTSTRAP
        own = self.directory.me
        was_member = self.member()
        while True:
            admitted, outsiders = self.links.sort_connected()
            if outsiders and self.on_outsiders is not None:
                self.on_outsiders(outsiders)
            connected = set(admitted)
            self.links.kept(connected)
            if connected:
                self.has_peers.set()
            now = trio.current_time()
            member = self.member()
            if not connected and (self.bootstrap or not member) and now - last_boot >= REBOOTSTRAP:
                # At start, and whenever we are alone again: for example a node that was
                # cut off until its admission reached the network. One whose own view says
                # it is no member may be wrong (admitted again while it was away): it tries
                # a few custodians it knows too, in case the bootstrap peers are gone.
                last_boot = now
                for addr in self.bootstrap:
                    await self.links.dial(addr)
                if not member and not self.links.connected():
                    for peer in pick(self.rng, [x for x in self.directory.peer_ids() if x != own], 3):
                        d = self.directory.get(peer)
                        if d is not None:
                            await self.links.dial_custodian(d, background=True)
                continue
            if now - window >= PULL_EVERY:
                window, new_pulls = now, 0
            jobs: list[tuple[Callable[[Any], Awaitable[Any]], Any]] = []
            # New peers over this window's quota are left to the random pulls below.
            new = sorted(connected - self._pulled)
            self._pulled |= set(new)
            for peer in new:  # connected again (or for the first time)
                self.on_connected(peer)
            for peer in pick(self.rng, new, NEW_PEER_PULLS - new_pulls):
                new_pulls += 1
                jobs.append((self._pull_all, peer))
            if now - last_pull > PULL_EVERY and connected:
                last_pull = now
                jobs += [(self._pull_all, peer) for peer in pick(self.rng, sorted(connected), 2)]
            if member and not was_member:
                self.became_member.set()
            was_member = member
            budget = MAX_PEERS - len(connected)
            if budget > 0 and member:  # dial custodians chosen at random, so that no one is everyone's first
                unconnected = [peer for peer in self.directory.peer_ids()
                               if peer != own and peer not in connected and self.links.admits(peer)]
                for peer in pick(self.rng, unconnected, budget):
                    d = self.directory.get(peer)
                    if d is not None:
                        jobs.append((self._dial_kept, d))
            if jobs:  # most rounds have none: no nursery for them
                async with trio.open_nursery() as n:
                    for job, arg in jobs:
                        n.start_soon(job, arg)
            self._pulled &= set(self.links.net.connected())  # admitted or not: only the gone leave
            await trio.sleep(0.5)

