"""An in-memory network for the node's Transport interface (a simulator, not a transport).

Many real node runtimes in one ``trio.run`` reach each other through a
:class:`MemoryNetwork` instead of sockets. It keeps the parts of the network a
node can observe:

* **latency**: ``latency(a, b)`` seconds each way, for connects (one round
  trip), requests (there and back) and every gossip hop;
* **loss and partitions**: ``lose(a, b)`` drops a gossip hop or fails a
  request; :meth:`partition` cuts pairs apart until :meth:`heal`;
* **the caps**: requests above the protocol's cap are refused TOO_LARGE, more
  than its limit in progress from one peer get BUSY, replies above the reply
  cap fail, as on libp2p;
* **a gossip overlay of bounded degree**, a mesh as GossipSub keeps one: a node
  grafts the peers it connects to into its mesh until it holds ``degree`` (D = 6
  by default), and takes grafts from others up to twice that (D_high), past it
  only from a node that has fewer than ``MESH_LOW`` (D_low = 4); every
  ``HEARTBEAT`` a node over D_high prunes down to D, and one under D grafts more;
  a peer that goes away is replaced from the node's other connections. A message goes
  on to the node's mesh peers (to ``degree`` connected peers chosen with the
  seeded RNG if it has none), so propagation takes the hops it would take, and
  its shortest path over the mesh (:meth:`MemoryNetwork.mesh`) is the bound of
  its delay. Every hop runs the receiving node's validator with the message's
  author, and a node forwards a message once. A message is named, as by py-libp2p's
  default, by its author and a per-author sequence number: publishing the
  same bytes again is a new message.

Protocol ids and topics are scoped to the node's network (``wire.scoped``), as
on libp2p: nodes of two networks share no protocol. Addresses are
``/memory/<peer id>``. Nothing here reads the wall clock: delays
are ``trio.sleep``, which a ``trio.testing.MockClock`` turns into virtual time.
A benchmark may hand in a ``cpu_clock`` and the protocols to ``charge``: the
time a handler of those spends computing (by that clock) is then added as
virtual delay before its reply, so that virtual time counts the crypto too
(:attr:`MemoryNetwork.charged` sums it per protocol).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node import _transport as tx
from shardnet.protocol import wire

Pair = Callable[[str, str], float]
MAX_SEEN = 100_000  # message ids a node remembers, for forwarding each message once
MESH_LOW = 4  # GossipSub's D_low: a node grafts peers whose meshes are full to have that many
HEARTBEAT = 1.0  # seconds between two mesh upkeeps, as GossipSub's heartbeat_interval=1


def _peer_of_seed(seed: bytes) -> str:
    return p.peer_id_of(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw())


@dataclass
class _Topic:
    validator: tx.Validator
    inbox: trio.MemorySendChannel[bytes]
    outbox: trio.MemoryReceiveChannel[bytes]


@dataclass
class _Node:
    peer_id: str
    connections: dict[str, None] = field(default_factory=dict)  # an ordered set
    mesh: dict[str, None] = field(default_factory=dict)  # the connections gossip goes on to
    handlers: dict[str, tuple[wire.StreamProtocol, tx.Handler, float]] = field(default_factory=dict)
    in_progress: dict[tuple[str, str], int] = field(default_factory=dict)
    topics: dict[str, _Topic] = field(default_factory=dict)
    seen: dict[bytes, None] = field(default_factory=dict)
    published: int = 0  # the sequence number of this node's last gossip message
    up: bool = True


class _Subscription:
    def __init__(self, topic: _Topic) -> None:
        self._topic = topic

    async def get(self) -> bytes:
        return await self._topic.outbox.receive()


class MemoryTransport:
    """One node's view of the :class:`MemoryNetwork` (implements ``Transport``)."""

    def __init__(self, network: MemoryNetwork, node: _Node, prefix: str) -> None:
        self._net = network
        self._node = node
        self._prefix = prefix
        self._protocols: dict[str, wire.StreamProtocol] = {}
        self._topics: dict[str, wire.Topic] = {}

    def _scoped(self, protocol: wire.StreamProtocol) -> wire.StreamProtocol:
        got = self._protocols.get(protocol.id)
        if got is None:
            got = self._protocols[protocol.id] = dataclasses.replace(
                protocol, id=wire.scoped(protocol.id, self._prefix))
        return got

    def _scoped_topic(self, topic: wire.Topic) -> wire.Topic:
        got = self._topics.get(topic.name)
        if got is None:
            got = self._topics[topic.name] = dataclasses.replace(topic, name=wire.scoped(topic.name, self._prefix))
        return got

    @property
    def peer_id(self) -> str:
        return self._node.peer_id

    @property
    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self.peer_id}/p2p/{self.peer_id}"]

    def connected(self) -> list[str]:
        return sorted(self._node.connections)

    async def connect(self, addr: str, timeout: float) -> str:  # noqa: ASYNC109
        peer = addr.rsplit("/p2p/", 1)[-1]
        if peer == self.peer_id:
            raise ValueError("refusing to dial ourselves")
        other = self._net.nodes.get(peer)
        if other is None or not other.up or not addr.startswith("/memory/") or self._net.cut(self.peer_id, peer):
            await trio.sleep(min(timeout, 2 * self._net.latency(self.peer_id, peer)))
            raise tx.ConnectError(f"dial {addr} failed: no route")
        rtt = self._net.latency(self.peer_id, peer) + self._net.latency(peer, self.peer_id)
        if rtt > timeout:
            await trio.sleep(timeout)
            raise tx.ConnectError(f"dial {addr} timed out after {timeout} s")
        await trio.sleep(rtt)
        self._node.connections[peer] = None
        other.connections[self.peer_id] = None
        self._net.graft(self._node, other)
        self._net.graft(other, self._node)
        return peer

    async def request(self, peer: str, protocol: wire.StreamProtocol, payload: bytes,
                      timeout: float) -> bytes:  # noqa: ASYNC109
        protocol = self._scoped(protocol)
        with trio.move_on_after(timeout):
            return await self._request(peer, protocol, payload)
        raise tx.RequestTimeout(peer, protocol.id, f"no reply within {timeout} s")

    async def _request(self, peer: str, protocol: wire.StreamProtocol, payload: bytes) -> bytes:
        other = self._net.nodes.get(peer)
        if peer not in self._node.connections or other is None or not other.up:
            raise tx.StreamOpenError(peer, protocol.id, "cannot open stream: not connected")
        if self._net.cut(self.peer_id, peer) or self._net.lose(self.peer_id, peer):
            await trio.sleep(wire.REQUEST_TIMEOUT)
            raise tx.RemoteProtocolError(peer, protocol.id, "stream failed: lost")
        if protocol.id not in other.handlers:  # as libp2p's protocol negotiation fails
            await trio.sleep(self._net.latency(self.peer_id, peer) + self._net.latency(peer, self.peer_id))
            raise tx.StreamOpenError(peer, protocol.id, "cannot open stream: protocol not supported")
        await trio.sleep(self._net.latency(self.peer_id, peer))
        status, body = await self._net.serve(other, self.peer_id, protocol, payload)
        await trio.sleep(self._net.latency(peer, self.peer_id))
        if status is not tx.ReplyStatus.OK:
            raise tx.RemoteError(peer, protocol.id, status, body.decode("utf-8", "replace"))
        if len(body) > protocol.max_reply:
            raise tx.RemoteProtocolError(peer, protocol.id, f"reply of {len(body)} bytes exceeds {protocol.max_reply}")
        return body

    def serve(self, protocol: wire.StreamProtocol, handler: tx.Handler, timeout: float) -> None:
        protocol = self._scoped(protocol)
        self._node.handlers[protocol.id] = (protocol, handler, timeout)

    async def subscribe(self, topic: wire.Topic, validator: tx.Validator) -> tx.Subscription:
        topic = self._scoped_topic(topic)
        send, recv = trio.open_memory_channel[bytes](math.inf)
        t = self._node.topics[topic.name] = _Topic(validator, send, recv)
        return _Subscription(t)

    async def publish(self, topic: wire.Topic, data: bytes) -> None:
        self._node.published += 1
        mid = hashlib.sha256(f"{self.peer_id}/{self._node.published}".encode()).digest()
        scoped = self._scoped_topic(topic)
        for tap in self._net.gossip_taps:
            tap(scoped.name, self.peer_id, data)
        self._net.gossip(self._node, self.peer_id, scoped, data, author=self.peer_id, mid=mid)

    async def disconnect(self, peer: str) -> None:
        self._node.connections.pop(peer, None)
        other = self._net.nodes.get(peer)
        if other is not None:
            other.connections.pop(self.peer_id, None)
            self._net.prune(self._node, other)


class MemoryNetwork:
    """The nodes of one simulation, their links, and the gossip overlay."""

    def __init__(self, *, latency: Pair | None = None, lose: Callable[[str, str], bool] | None = None,
                 degree: int = 6, seed: int = 0, trace: bool = True, cpu_clock: Callable[[], float] | None = None,
                 charge: frozenset[str] = frozenset(), charge_gossip: bool = False) -> None:
        """``trace``: keep every event in :attr:`trace` (for determinism checks); without
        it only :attr:`events` counts them, which is what a large run can afford.
        ``cpu_clock`` and ``charge``: see the module docstring; ``charge_gossip``: a node
        forwards a message after its validator's compute time, by ``cpu_clock``."""
        self.cpu_clock = cpu_clock
        self.charge_gossip = charge_gossip
        self.charge = frozenset(c.split("/", 2)[-1] for c in charge)  # without the leading /shardnet/
        self.charged: dict[str, list[float]] = {}
        self.nodes: dict[str, _Node] = {}
        self.latency: Pair = latency or (lambda a, b: 0.0)
        self.lose: Callable[[str, str], bool] = lose or (lambda a, b: False)
        self.degree = degree
        self.taps: list[Callable[[str, bytes], None]] = []
        #: Called as ``(topic, author, data)`` for every message a node publishes.
        self.gossip_taps: list[Callable[[str, str, bytes], None]] = []
        self.rng = random.Random(seed)
        self._cuts: set[frozenset[str]] = set()
        self._nursery: trio.Nursery | None = None
        # Gossip hops in flight: (due time, order, hop). One task delivers them all, so
        # a hop costs a heap push and pop rather than a trio task of its own.
        self._hops: list[tuple[float, int, tuple[str, str, wire.Topic, bytes, str, bytes]]] = []
        self._hop_order = 0
        self._hops_changed = trio.Event()
        self.trace: list[tuple[float, str, str, str, int]] = []  # (time, node, kind, peer, length)
        self.events = 0
        self._tracing = trace
        #: Called as ``(node, topic, data)`` when a node takes a gossip message in (its validator
        #: accepted it), at that virtual time: a benchmark's probe of propagation.
        self.on_gossip: Callable[[str, str, bytes], None] | None = None
        #: When a list: every mesh link made is appended to it (a benchmark's bound counts them).
        self.grafts: list[tuple[str, str]] | None = None

    # -- faults ----------------------------------------------------------------------

    def partition(self, side_a: set[str], side_b: set[str]) -> None:
        self._cuts |= {frozenset((a, b)) for a in side_a for b in side_b}

    def heal(self) -> None:
        self._cuts.clear()

    def cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._cuts

    # -- running ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryNetwork]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._deliver_hops)
            nursery.start_soon(self._heartbeat)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self._nursery = None

    def factory(self) -> tx.TransportFactory:
        """What a NodeRuntime takes as its ``transport``."""

        @asynccontextmanager
        async def transport(seed: bytes, listen: list[str], prefix: str) -> AsyncIterator[tx.Transport]:
            peer = _peer_of_seed(seed)
            node = self.nodes.get(peer) or _Node(peer)
            node.up, node.handlers, node.topics = True, {}, {}
            self.nodes[peer] = node
            try:
                yield MemoryTransport(self, node, prefix)
            finally:
                node.up = False
                for other in list(node.connections):
                    self.nodes[other].connections.pop(peer, None)
                    self.prune(node, self.nodes[other])
                node.connections.clear()

        return transport

    # -- the mesh ----------------------------------------------------------------------

    def graft(self, node: _Node, other: _Node) -> None:
        """``node`` takes ``other`` into its mesh if it holds fewer than ``degree`` and
        ``other`` fewer than twice that, or ``node`` fewer than ``MESH_LOW`` (GossipSub's D_low:
        no node is left out of the mesh because its peers' meshes are full). Mesh links go
        both ways."""
        if other.peer_id in node.mesh or len(node.mesh) >= self.degree:
            return
        if len(other.mesh) >= 2 * self.degree and len(node.mesh) >= min(MESH_LOW, self.degree):
            return
        node.mesh[other.peer_id] = None
        other.mesh[node.peer_id] = None
        if self.grafts is not None:
            self.grafts.append((node.peer_id, other.peer_id))

    def prune(self, node: _Node, other: _Node) -> None:
        """The link between the two is gone: each fills its mesh from its other connections."""
        node.mesh.pop(other.peer_id, None)
        other.mesh.pop(node.peer_id, None)
        for one in (node, other):
            if not one.up:
                one.mesh.clear()
                continue
            for peer in list(one.connections):
                if len(one.mesh) >= self.degree:
                    break
                got = self.nodes.get(peer)
                if got is not None and got.up:
                    self.graft(one, got)

    async def _heartbeat(self) -> None:
        """GossipSub's mesh upkeep, every HEARTBEAT: a node over D_high prunes down to D (the
        peers with the most mesh peers first); one under D grafts from its other connections,
        those with the fewest mesh peers first."""
        while True:
            await trio.sleep(HEARTBEAT)
            for node in self.nodes.values():
                if not node.up:
                    continue
                if len(node.mesh) > 2 * self.degree:
                    for peer in sorted(node.mesh, key=lambda q: -len(self.nodes[q].mesh))[:len(node.mesh) - self.degree]:
                        node.mesh.pop(peer, None)
                        self.nodes[peer].mesh.pop(node.peer_id, None)
                elif len(node.mesh) < self.degree and len(node.connections) > len(node.mesh):
                    others = [self.nodes[q] for q in node.connections if q not in node.mesh and q in self.nodes]
                    for got in sorted((o for o in others if o.up), key=lambda o: len(o.mesh)):
                        if len(node.mesh) >= self.degree:
                            break
                        self.graft(node, got)

    def mesh(self) -> dict[str, list[str]]:
        """Each node's mesh peers now (the gossip overlay)."""
        return {peer: list(node.mesh) for peer, node in self.nodes.items() if node.up}

    def _log(self, node: str, kind: str, peer: str, length: int) -> None:
        self.events += 1
        if self._tracing:
            self.trace.append((trio.current_time(), node, kind, peer, length))

    async def serve(self, node: _Node, remote: str, protocol: wire.StreamProtocol,
                    payload: bytes) -> tuple[tx.ReplyStatus, bytes]:
        self._log(node.peer_id, "request", remote, len(payload))
        for tap in self.taps:  # who watches the requests (the fuzz campaign collects its seeds)
            tap(protocol.id, payload)
        entry = node.handlers.get(protocol.id)
        if entry is None:
            return tx.ReplyStatus.REJECTED, b"protocol not supported"
        proto, handler, timeout = entry
        if len(payload) > proto.max_request:
            return tx.ReplyStatus.TOO_LARGE, f"frame of {len(payload)} bytes exceeds the cap".encode()
        key = (remote, proto.id)
        if node.in_progress.get(key, 0) >= proto.max_concurrent_per_peer:
            return tx.ReplyStatus.BUSY, b"busy"
        node.in_progress[key] = node.in_progress.get(key, 0) + 1
        try:
            with trio.move_on_after(timeout):
                try:
                    if self.cpu_clock is not None and proto.id.split("/", 3)[-1] in self.charge:
                        t0 = self.cpu_clock()
                        reply = await handler(remote, payload)
                        spent = self.cpu_clock() - t0
                        self.charged.setdefault(proto.id, []).append(spent)
                        await trio.sleep(spent)
                        return tx.ReplyStatus.OK, reply
                    return tx.ReplyStatus.OK, await handler(remote, payload)
                except tx.RequestRejected as exc:
                    return tx.ReplyStatus.REJECTED, str(exc).encode()[:256]
                except Exception:  # a handler bug: as on libp2p, the peer gets INTERNAL
                    return tx.ReplyStatus.INTERNAL, b"internal error"
            return tx.ReplyStatus.TIMEOUT, b"handler timed out"
        finally:
            node.in_progress[key] -= 1
            if not node.in_progress[key]:
                del node.in_progress[key]

    # -- gossip ----------------------------------------------------------------------

    def gossip(self, node: _Node, sender: str, topic: wire.Topic, data: bytes, *, author: str,
               mid: bytes) -> None:
        """``node`` got message ``mid`` from ``sender`` (itself, when it publishes): validate,
        deliver, forward."""
        if not node.up or len(data) > topic.max_message:
            return
        if mid in node.seen:
            return
        node.seen[mid] = None
        if len(node.seen) > MAX_SEEN:
            del node.seen[next(iter(node.seen))]
        sub = node.topics.get(topic.name)
        spent = 0.0
        if sub is not None and self.cpu_clock is not None and self.charge_gossip:
            t0 = self.cpu_clock()
            valid = sub.validator(author, data)
            spent = self.cpu_clock() - t0  # the validator's compute: it forwards after it
        else:
            valid = sub is not None and sub.validator(author, data)
        if sub is None or not valid:
            return  # a node forwards only what its own validator accepts
        self._log(node.peer_id, "gossip", sender, len(data))
        sub.inbox.send_nowait(data)
        if self.on_gossip is not None:
            self.on_gossip(node.peer_id, topic.name, data)
        assert self._nursery is not None, "run the network: async with network.running()"
        peers = [peer for peer in node.mesh if peer != sender and peer in node.connections]
        if not node.mesh:  # no mesh yet: as GossipSub's fanout, some connected peers
            peers = [peer for peer in node.connections if peer != sender]
            if len(peers) > self.degree:
                peers = self.rng.sample(peers, self.degree)
        now = trio.current_time()
        for peer in peers:
            if self.cut(node.peer_id, peer) or self.lose(node.peer_id, peer):
                continue
            self._hop_order += 1
            due = now + spent + self.latency(node.peer_id, peer)
            if not self._hops or due < self._hops[0][0]:
                self._hops_changed.set()
            heapq.heappush(self._hops, (due, self._hop_order, (node.peer_id, peer, topic, data, author, mid)))

    async def _deliver_hops(self) -> None:
        """Deliver every gossip hop at its due time, in the order they were sent."""
        while True:
            self._hops_changed = trio.Event()
            if not self._hops:
                await self._hops_changed.wait()
                continue
            due = self._hops[0][0]
            if due > trio.current_time():
                with trio.move_on_at(due):
                    await self._hops_changed.wait()
                continue
            while self._hops and self._hops[0][0] <= trio.current_time():
                _, _, (sender, peer, topic, data, author, mid) = heapq.heappop(self._hops)
                target = self.nodes.get(peer)
                if target is not None:
                    self.gossip(target, sender, topic, data, author=author, mid=mid)
            await trio.lowlevel.checkpoint()


__all__ = ["MemoryNetwork", "MemoryTransport"]
