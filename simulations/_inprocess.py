"""The ``inprocess`` mode: real py-libp2p hosts on loopback, in one trio run.

Every node is a real runtime with a real home on disk (SQLite, key files) and
a real libp2p host on 127.0.0.1 (TCP, Noise, yamux, GossipSub). Between them
the delay layer (``_delay``) holds every byte of a connection for the pair's
one-way latency from the topology, beneath Noise, so that a 150 ms RTT pair
answers a request in about 150 ms plus the processing, and every gossip hop
takes its link's delay. Partitions hold the bytes until they heal.

Time is the wall clock (trio's), so the figures include every node's
processing; with all nodes in one process they share one core, which is what
limits this mode's size (see the module docstring of ``_scenario``).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from shardnet.node import _net
from shardnet.node._home import Home, init_home
from shardnet.node._keystore import FileKeystore
from shardnet.node._libp2p_transport import Libp2pTransport
from shardnet.node._runtime import NodeRuntime
from shardnet.node._transport import TransportFactory
from shardnet.protocol import wire

from ._cluster import BUSY, Cluster, ClusterFailed
from ._delay import Links, delay_connections
from ._drbg import Drbg
from ._topology import Topology
from .grid import EPOCH, network_of, seeded

START = 120.0  # seconds a node may take to start
SETTLE = 300.0  # seconds every node may take to know every node


class Counter(logging.Handler):
    """Counts log records by logger and level."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name} {record.levelname}"
        self.counts[key] = self.counts.get(key, 0) + 1


class InprocessCluster(Cluster):
    mode = "inprocess"
    wall_clock = True

    def __init__(self, root: pathlib.Path, topology: Topology, *, seed: int, autopilot: bool = False) -> None:
        super().__init__(topology, seed=seed)
        self.autopilot = autopilot
        self.rng = Drbg(b"shardnet-inprocess" + seed.to_bytes(8, "big"))
        self.homes: list[Home] = [
            init_home(root / f"node-{i:04d}", name=s.name, country=s.country, city=s.city, org=s.org,
                      listen=["/ip4/127.0.0.1/tcp/0"], rng=self.rng)
            for i, s in enumerate(topology.sites)]
        g, records = network_of(self.homes)
        for h in self.homes:  # each node's disk holds the network and every admission, as if pulled
            with h.open_store() as store:
                seeded(store, g, records)
        self._named([h.peer_id() for h in self.homes])
        self.links = Links(self.transit)
        self._nets: dict[str, _net.NetHost] = {}
        self._prefix = ""
        self._nursery: trio.Nursery | None = None
        self._t0 = 0.0
        self._stopping: set[int] = set()
        self.log_counter = Counter()
        self.log = logging.getLogger("shardnet.simulations.libp2p")
        self.log.propagate = False
        self.log.handlers = [self.log_counter]

    def _clock(self) -> float:
        return EPOCH + trio.current_time() - self._t0

    def _transport(self) -> TransportFactory:
        @asynccontextmanager
        async def transport(seed: bytes, listen: list[str], prefix: str) -> AsyncIterator[Libp2pTransport]:
            assert self._nursery is not None
            async with _net.running_node_host(seed, listen) as net:
                delay_connections(net.host, self.links, self._nursery)
                self._nets[net.peer_id] = net
                self._prefix = prefix
                try:
                    yield Libp2pTransport(net, prefix)
                finally:
                    self._nets.pop(net.peer_id, None)
        return transport

    def _runtime(self, i: int, bootstrap: list[str]) -> NodeRuntime:
        h = self.homes[i]
        return NodeRuntime(h, keystore=FileKeystore.from_home(h), transport=self._transport(), bootstrap=bootstrap,
                           clock=self._clock, rng=self.rng, operator_io=False, autopilot=self.autopilot)

    def _bootstrap(self, avoid: int) -> list[str]:
        for i, peer in enumerate(self.peers):
            net = self._nets.get(peer)
            if i != avoid and net is not None:
                return net.listen_addrs[:1]
        return []

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        self._t0 = trio.current_time()
        # libp2p's and the nodes' own warnings (peers gone, hosts closing slowly: what
        # crashes and partitions cause) are counted, not printed.
        _net.route_libp2p_logging(self.log, logging.WARNING)
        node_log = logging.getLogger("shardnet.node")
        saved = node_log.propagate
        node_log.addHandler(self.log_counter)
        node_log.propagate = False
        try:
            async with self._nodes_running() as cluster:
                yield cluster
        finally:
            node_log.removeHandler(self.log_counter)
            node_log.propagate = saved
            _net.route_libp2p_logging(logging.getLogger("shardnet.libp2p"), logging.WARNING)

    @asynccontextmanager
    async def _nodes_running(self) -> AsyncIterator[Cluster]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.nodes = [self._runtime(0, [])]
            await self._start(0)
            boot = self._bootstrap(-1)
            for i in range(1, len(self.homes)):
                self.nodes.append(self._runtime(i, boot))
                await self._start(i)
            try:
                yield self
            finally:
                with trio.CancelScope(shield=True):  # one by one, each as a crash: see crash()
                    for i in range(len(self.nodes)):
                        if self.up(i):
                            await self.crash(i)
                self._nursery = None
                # A connection a stopped host did not get to close (py-libp2p closes them
                # one by one, within a time limit) still has its delay pumps here.
                nursery.cancel_scope.cancel()

    async def _start(self, i: int) -> None:
        assert self._nursery is not None
        self._stopping.discard(i)
        with trio.fail_after(START):
            await self._nursery.start(self._run, i, self.nodes[i])

    async def _run(self, i: int, node: NodeRuntime, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """A node's life. An error while it stops because we stopped it (py-libp2p can raise
        out of a host whose pubsub stopped before its last stream) is counted, not raised:
        any other error ends the run."""
        try:
            await node.run(task_status=task_status)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            if i not in self._stopping:
                raise
            self.log_counter.counts[f"error while node stopped: {type(exc).__name__}"] = \
                self.log_counter.counts.get(f"error while node stopped: {type(exc).__name__}", 0) + 1

    def now(self) -> float:
        return trio.current_time()

    def logged(self) -> dict[str, int]:
        return dict(sorted(self.log_counter.counts.items()))

    async def mesh(self, topic: wire.Topic = wire.MEMBERSHIP_TOPIC) -> dict[str, list[str]]:
        name = wire.scoped(topic.name, self._prefix)
        return {peer: sorted(p.to_base58() for p in net.router.mesh.get(name, ()))
                for peer, net in self._nets.items() if net.router is not None}

    def up(self, i: int) -> bool:
        return self.peers[i] in self._nets

    async def settle(self) -> float:
        t0 = trio.current_time()
        n = len(self.nodes)
        for _ in range(int(SETTLE / 0.1)):
            if all(len(node.directory) >= n for i, node in enumerate(self.nodes) if self.up(i)):
                break
            await trio.sleep(0.1)
        took = trio.current_time() - t0
        short = {i: len(node.directory) for i, node in enumerate(self.nodes) if self.up(i) and len(node.directory) < n}
        if short:
            raise ClusterFailed(f"the directory did not converge within {SETTLE:.0f} s: nodes (custodians known) {short}")
        if not await self._meshes_and_quiet():
            self.log_counter.counts[BUSY] = 1
        return took

    async def crash(self, i: int) -> None:
        """As a killed process: its listener goes at once (the kernel refuses new
        connections), then the node stops. py-libp2p closes a host's connections one after
        another, 0.1 s each, before its listeners; a peer dialing in meanwhile would reach
        a host whose services have stopped."""
        net = self._nets.get(self.peers[i])
        if net is not None:
            for listener in list(net.host.get_network().listeners.values()):
                await listener.close()
        self._stopping.add(i)
        self.nodes[i].stop()
        for _ in range(6000):
            if not self.up(i):
                await self.links.close_all(self.peers[i])  # as the kernel closes a dead process's sockets
                return
            await trio.sleep(0.01)
        raise ClusterFailed(f"node {i} did not stop within 60 s")

    async def restart(self, i: int) -> None:
        if self._nursery is None or self.up(i):
            raise RuntimeError(f"node {i} is running, or the cluster is not")
        self.nodes[i] = self._runtime(i, self._bootstrap(i))
        await self._start(i)

    def partition(self, side_a: set[int], side_b: set[int]) -> None:
        self.links.partition({self.peers[i] for i in side_a}, {self.peers[i] for i in side_b})

    def heal(self) -> None:
        self.links.heal()
