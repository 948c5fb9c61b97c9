"""The ``virtual`` mode: a scenario's nodes on the grid, in virtual time.

Every node is a real runtime over the memory network (``grid.py``), placed at
its topology site: its admission carries the site's country, city and org, and
each pair's latency is the topology's. Time is trio's MockClock, so a run of
a thousand nodes waits for nothing.

The CPU model (on by default): the time a node's handler of any stream
protocol spends computing, and the time its gossip validator takes, are
measured with the process's CPU clock and charged as virtual delay before its
reply or its forwarding (``MemoryNetwork(charge=...)``). A ratio to a bound
can then come out above 1 because of the crypto, as it would on a network.
The requester's own work (checking partials, combining) is not charged.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from shardnet.protocol import wire

from ._cluster import Cluster
from ._topology import Topology
from .grid import Grid


class VirtualCluster(Cluster):
    mode = "virtual"

    def __init__(self, root: pathlib.Path, topology: Topology, *, seed: int, cpu_model: bool = True,
                 autopilot: bool = False) -> None:
        super().__init__(topology, seed=seed)
        self.cpu_model = cpu_model

        def latency(a: str, b: str) -> float:
            return self.transit(a, b)

        self.grid = Grid(root, len(topology.sites), latency=latency, seed=seed, trace=False, republish=60.0,
                         sites=topology.sites, cpu_clock=time.process_time if cpu_model else None,
                         charge=frozenset(x.id for x in wire.STREAM_PROTOCOLS) if cpu_model else frozenset(),
                         charge_gossip=cpu_model, autopilot=autopilot)
        self._named([h.peer_id() for h in self.grid.homes])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        async with self.grid.running():
            self.nodes = self.grid.nodes  # the grid replaces a node's runtime when it restarts
            yield self

    def now(self) -> float:
        return trio.current_time()

    async def mesh(self, topic: wire.Topic = wire.MEMBERSHIP_TOPIC) -> dict[str, list[str]]:
        return self.grid.network.mesh()  # one overlay carries every topic

    def up(self, i: int) -> bool:
        return self.grid.network.nodes[self.peers[i]].up

    async def settle(self) -> float:
        took = await self.grid.wait_directory(within=3600)
        await trio.sleep(10)  # a few heartbeats: the mesh settles from the bootstrap's star
        return took

    async def crash(self, i: int) -> None:
        await self.grid.crash(i)

    async def restart(self, i: int) -> None:
        await self.grid.restart(i)

    def partition(self, side_a: set[int], side_b: set[int]) -> None:
        self.grid.network.partition({self.peers[i] for i in side_a}, {self.peers[i] for i in side_b})

    def heal(self) -> None:
        self.grid.network.heal()
