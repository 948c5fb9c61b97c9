"""What a scenario does to a network of real nodes, whatever runs them.

Everything a scenario asks (import, reconstruct with the approvers answering
at once, revoke, watch a record spread) is written once here, over each node's
control commands (:meth:`Cluster.command`: the table ``shardnet`` calls over the
control socket). The ``virtual`` mode (the grid, in virtual time) and the
``inprocess`` mode (real libp2p hosts on loopback) hold the real
:class:`NodeRuntime` objects in this process and call them directly; the
``multiprocess`` mode asks each node process over its control socket. A mode
supplies the commands, the clock, the gossip mesh, the latency between two
nodes and the faults.

The bounds are the network's physical delays, from the topology:

* a gossip from a to b: the one-way latency along the shortest path over the
  gossip mesh (Dijkstra, over the mesh at the publication);
* a reconstruction: the request's gossip to an approver and its vote's gossip
  back (each over its topic's mesh), for the quorum-th quickest approver, plus
  one round trip to the t-th nearest holder that is up.
"""

from __future__ import annotations

import base64
import heapq
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from shardnet.node._control_server import ControlError
from shardnet.protocol import wire

from ._byzantine import contradict
from ._geo_placement import Placement, choose
from ._linkfaults import LinkFaults
from ._topology import Topology

if TYPE_CHECKING:
    from shardnet.node._runtime import NodeRuntime

QUIESCE = 240.0  # seconds the start's gossip may take to die down (wall-clock modes)
QUIET_WINDOW = 2.0
BUSY = "still busy after the quiet wait"  # what a mode logs when the wait ran out
POLL = 0.005  # seconds between two looks at the nodes: the resolution of arrival times (in this process)
DELIVER_WAIT = 120.0  # seconds an import may take to deliver every shard (one process runs every node)


async def silent(event: dict[str, Any]) -> None:
    return None


def shortest_paths(graph: Mapping[str, Sequence[str]], source: str, weight: Callable[[str, str], float]) -> dict[str, float]:
    """One-way delay from ``source`` to every node it reaches over ``graph``."""
    dist = {source: 0.0}
    heap = [(0.0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist.get(u, float("inf")):
            continue
        for v in graph.get(u, ()):
            nd = d + weight(u, v)
            if nd < dist.get(v, float("inf")):
                dist[v] = nd
                heapq.heappush(heap, (nd, v))
    return dist


class ClusterFailed(RuntimeError):
    """The simulated network could not do what the run needed of it (an import that did not
    deliver, a directory that did not converge, a node that would not start or stop): the
    run stops there, and says why in one line."""


@dataclass
class Reconstruction:
    ok: bool
    seconds: float
    bound: float
    error: str = ""
    liars: tuple[str, ...] = ()
    cpu_s: float | None = None  # this process's CPU time meanwhile: every node's processing, when they share it
    request: str = ""  # the request's id, when the round got as far as making one


class Cluster:
    """The part of a network every mode shares; a mode subclasses it."""

    mode = ""
    wall_clock = False  # times are the wall clock's, every node's processing in them (see Run.reconstruction)
    poll = POLL
    nodes_peak_rss_mib: float | None = None  # the node processes' peak, where they are not this process

    def __init__(self, topology: Topology, *, seed: int = 0) -> None:
        self.topology = topology
        self.faults = LinkFaults(random.Random(f"shardnet-linkfaults-{seed}"))  # not the run's own stream
        self._busy: dict[tuple[str, str], float] = {}  # a faulty link's last byte due: TCP keeps the order
        self.nodes: list[NodeRuntime] = []
        self.peers: list[str] = []
        self._site_of: dict[str, int] = {}
        self._one_way: dict[tuple[int, int], float] = {}
        self._owners: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}  # what each import split: a reconstruction must give it back

    # -- what a mode supplies ------------------------------------------------------

    def now(self) -> float:
        raise NotImplementedError

    async def mesh(self, topic: wire.Topic = wire.MEMBERSHIP_TOPIC) -> dict[str, list[str]]:
        """Each running node's gossip mesh peers on ``topic`` now."""
        raise NotImplementedError

    async def command(self, i: int, name: str, args: dict[str, Any]) -> Any:
        """Node ``i``'s control command ``name`` (what ``shardnet`` would ask it)."""
        return await self.nodes[i].commands()[name](args, silent)

    def incarnation(self, i: int) -> object:
        """What tells node ``i``'s runs apart: a restart makes a new one."""
        return self.nodes[i]

    def cpu_time(self) -> float:
        """CPU seconds spent so far by every node (and this process's share of their work)."""
        return time.process_time()

    async def revoked_on(self, i: int, peer: str) -> bool:
        node = self.nodes[i]
        return node.members.view.state(peer, int(node.now())) == "revoked"

    async def knows(self, i: int) -> int:
        """How many custodians node ``i``'s directory holds."""
        return len(self.nodes[i].directory)

    def up(self, i: int) -> bool:
        raise NotImplementedError

    async def crash(self, i: int) -> None:
        raise NotImplementedError

    async def restart(self, i: int) -> None:
        raise NotImplementedError

    def partition(self, side_a: set[int], side_b: set[int]) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        raise NotImplementedError
        yield self  # pragma: no cover

    async def settle(self) -> float:
        """Until every node knows every node; the seconds it took."""
        raise NotImplementedError

    def logged(self) -> dict[str, int]:
        """Warnings the nodes and their network logged during the run, counted by logger."""
        return {}

    def quiet_cores(self) -> float:
        """The CPU (in cores, by :meth:`cpu_time`) under which the nodes count as idle."""
        return 0.5

    # -- shared ----------------------------------------------------------------------

    async def _meshes_and_quiet(self) -> bool:
        """After the directory converged, in a wall-clock mode: a few GossipSub heartbeats (1 s)
        for the meshes to fill, then until the nodes are no longer busy with the start's
        gossip (a window of ``QUIET_WINDOW`` s under :meth:`quiet_cores`), for at most
        ``QUIESCE`` s; False if they still were. The nodes share this machine's cores, so a
        measurement made during that storm measures the storm; tens of nodes take a minute
        or more."""
        await trio.sleep(3)
        for _ in range(int(QUIESCE / QUIET_WINDOW)):
            c0, t0 = self.cpu_time(), time.perf_counter()
            await trio.sleep(QUIET_WINDOW)
            if (self.cpu_time() - c0) / (time.perf_counter() - t0) < self.quiet_cores():
                return True
        return False

    def _named(self, peers: list[str]) -> None:
        self.peers = peers
        self._site_of = {peer: i for i, peer in enumerate(peers)}

    def index(self, peer: str) -> int:
        return self._site_of[peer]

    def one_way(self, a: int, b: int) -> float:
        """Seconds from node a to node b, one way, from the topology."""
        key = (a, b) if a < b else (b, a)
        got = self._one_way.get(key)
        if got is None:
            s = self.topology.sites
            got = self._one_way[key] = self.topology.one_way_s(s[a], s[b])
        return got

    def peer_latency(self, a: str, b: str) -> float:
        """The physical one-way delay from a to b: the topology's, a slow link's extra included."""
        return self.one_way(self._site_of[a], self._site_of[b]) + self.faults.extra(a, b)

    def transit(self, a: str, b: str) -> float:
        """What one send from a to b (a write on the connection, a gossip hop, a request's leg)
        takes if it starts now: ``peer_latency`` and what its losses cost (drawn: see
        ``_linkfaults``). On a faulty link nothing overtakes a send held back by a loss, as
        on one TCP connection. The modes' transports delay by this."""
        base = self.one_way(self._site_of[a], self._site_of[b])
        if not self.faults.active(a, b):
            return base
        now = self.now()
        due = max(now + base + self.faults.penalty(a, b, base), self._busy.get((a, b), 0.0))
        self._busy[(a, b)] = due
        return due - now

    def degrade(self, *, extra_s: float = 0.0, loss: float = 0.0) -> None:
        """Every link slow (``extra_s`` more each way) and lossy; :meth:`restore` undoes it."""
        self.faults.degrade(extra_s=extra_s, loss=loss)

    def restore(self) -> None:
        self.faults.restore()
        self._busy.clear()

    def gossip_bounds(self, source: int, mesh: dict[str, list[str]]) -> dict[int, float]:
        """The overlay's shortest-path delay from ``source`` to every node it reaches over ``mesh``."""
        got = shortest_paths(mesh, self.peers[source], self.peer_latency)
        return {self._site_of[peer]: d for peer, d in got.items()}

    async def import_key(self, owner: int, key: bytes, threshold: int, shares: int, pl: Placement, *,
                         requester: int | None = None, seed: int = 0, custodians: Sequence[int] = ()) -> str:
        """Import from node ``owner`` with a scenario placement, or onto exactly ``custodians``;
        every shard delivered."""
        args: dict[str, Any] = {"key": base64.b64encode(key).decode(), "threshold": threshold, "shares": shares,
                                "placement": pl.node_expr or None, "wait": DELIVER_WAIT}
        if custodians:
            args["custodians"] = [self.peers[i] for i in custodians]
        elif pl.latency_aware:
            sites = self.topology.sites
            candidates = [s for i, s in enumerate(sites) if i != owner]
            names = choose(self.topology, pl, shares, requester=sites[owner if requester is None else requester],
                           candidates=candidates, seed=seed)
            by_name = {s.name: i for i, s in enumerate(sites)}
            args["custodians"] = [self.peers[by_name[n]] for n in names]
        res = await self.command(owner, "key-import", args)
        states = [s["state"] for s in res["shards"]]
        if states != ["delivered"] * len(states):
            raise ClusterFailed(f"an import from node {owner} did not deliver every shard within "
                                f"{DELIVER_WAIT:.0f} s: {states}")
        self._owners[str(res["keyset"])] = owner
        self._keys[str(res["keyset"])] = key
        return str(res["keyset"])

    async def holders(self, owner: int, keyset: str) -> list[int]:
        """The keyset's holders now, as its owner's node lists them."""
        detail = await self.command(owner, "key-show", {"keyset": keyset})
        return [self._site_of[s["custodian"]] for s in detail["shards"]]

    async def _detail(self, keyset: str) -> dict[str, Any]:
        """``key show`` of the keyset, from its owner or else any node up that holds it."""
        owner = self._owners.get(keyset, 0)
        for i in [owner, *range(len(self.peers))]:
            if self.up(i):
                try:
                    return dict(await self.command(i, "key-show", {"keyset": keyset}))
                except (LookupError, ControlError):
                    continue
        raise LookupError(f"no node up holds keyset {keyset}")

    async def reconstruct_bound(self, requester: int, keyset: str, holders: Sequence[int]) -> float:
        detail = await self._detail(keyset)
        there = self.gossip_bounds(requester, await self.mesh(wire.REQUEST_TOPIC))
        back_mesh = await self.mesh(wire.VOTE_TOPIC)
        trips = []
        for peer in detail["approvers"]:
            a = self._site_of[peer]
            if not self.up(a):
                continue
            back = self.gossip_bounds(a, back_mesh).get(requester)
            if a in there and back is not None:
                trips.append(there[a] + back)
        trips.sort()
        me = self.peers[requester]
        rtts = sorted(self.peer_latency(me, self.peers[h]) + self.peer_latency(self.peers[h], me)
                      for h in holders if self.up(h))
        if len(trips) < detail["quorum"] or len(rtts) < detail["threshold"]:
            return float("nan")  # no quorum or too few holders up: no bound to speak of
        return trips[detail["quorum"] - 1] + rtts[detail["threshold"] - 1]

    async def approval_rule(self, keyset: str) -> tuple[list[int], int]:
        """The keyset's approvers (node indices) and its quorum."""
        detail = await self._detail(keyset)
        return sorted(self._site_of[a] for a in detail["approvers"]), int(detail["quorum"])

    async def epoch(self, i: int, keyset: str) -> int:
        """The keyset's current epoch in node ``i``'s view (0 before any round committed)."""
        return int((await self.command(i, "key-show", {"keyset": keyset}))["epoch"])

    async def voided(self, i: int, request_id: str) -> set[int]:
        """The approvers node ``i`` holds a double vote of on that request (void, as evidence)."""
        rows = [r for r in await self.command(i, "requests", {}) if r["request"] == request_id]
        return {self._site_of[a] for r in rows for a in r["void"]}

    async def double_vote(self, i: int, request_id: str) -> None:
        """Approver ``i``, having approved, denies too (``_byzantine.contradict``)."""
        await contradict(self.nodes[i], request_id)

    async def reconstruct(self, requester: int, keyset: str, *, within: float = 60.0,
                          double_voters: frozenset[int] = frozenset()) -> Reconstruction:
        """Ask for the key from node ``requester``; every approver that is up approves as soon
        as the request reaches it (a scenario's approvers answer at once), and each of
        ``double_voters`` denies it too (``_byzantine.contradict``)."""
        if not self.up(requester):
            raise ClusterFailed(f"node {requester} is down: it cannot ask for a key")
        holders = await self.holders(self._owners[keyset], keyset)
        bound = await self.reconstruct_bound(requester, keyset, holders)
        approvers, _ = await self.approval_rule(keyset)
        asker = self.peers[requester]
        result: dict[str, Any] = {}
        c0 = self.cpu_time()
        t0 = self.now()

        async def ask() -> None:
            try:
                result.update(await self.command(requester, "key-reconstruct", {
                    "keyset": keyset, "timeout": within, "reason": "scenario", "mode": "unwrap"}))
            except ControlError as exc:
                result["error"] = str(exc)
            result["seconds"] = self.now() - t0
            result["cpu_s"] = self.cpu_time() - c0 if self.wall_clock else None

        async def approve(i: int) -> None:
            """Approver i votes as soon as it sees the request (each on its own, at once)."""
            for _ in range(int(within / self.poll) + 1):
                if self.up(i):
                    life = self.incarnation(i)
                    try:
                        for row in await self.command(i, "requests", {}):
                            if (row["keyset"] == keyset and row["approver"] and row["my_vote"] is None
                                    and row["requester"] == asker and row["state"] == "pending"):
                                await self.command(i, "approve", {"request": row["request"]})
                                if i in double_voters:
                                    await self.double_vote(i, row["request"])
                                return
                    except Exception:
                        if self.up(i) and life == self.incarnation(i):
                            raise
                        # it crashed while voting (a scenario's churn): it votes again if it comes back
                await trio.sleep(self.poll)

        async with trio.open_nursery() as nursery:
            for i in approvers:
                nursery.start_soon(approve, i)
            await ask()
            nursery.cancel_scope.cancel()  # approvers that never saw the request
        took, cpu = result["seconds"], result["cpu_s"]
        if "error" in result:
            return Reconstruction(False, took, bound, result["error"], cpu_s=cpu)
        if base64.b64decode(result["key"]) != self._keys[keyset]:
            return Reconstruction(False, took, bound, "the key that came back is not the one imported", cpu_s=cpu)
        return Reconstruction(True, took, bound, liars=tuple(b["custodian"] for b in result["invalid"]), cpu_s=cpu,
                              request=result["request"])

    async def spread(self, source: int, knows: Callable[[int], Awaitable[bool]], *, targets: Sequence[int],
                     within: float) -> dict[int, float]:
        """Seconds from now until each of ``targets`` ``knows``; those that never do within
        ``within`` are missing from the result. Each look asks every node left at once."""
        t0 = self.now()
        arrived: dict[int, float] = {}
        left = list(targets)

        async def look(i: int) -> None:
            if self.up(i) and await knows(i):
                arrived.setdefault(i, self.now() - t0)

        while left and self.now() - t0 < within:
            async with trio.open_nursery() as nursery:
                for i in left:
                    nursery.start_soon(look, i)
            left = [i for i in left if i not in arrived]
            if left:
                await trio.sleep(self.poll)
        return arrived

    async def revoke_member(self, by: int, victim: int) -> None:
        await self.command(by, "member-revoke", {"peer": self.peers[victim], "reason": "scenario"})
