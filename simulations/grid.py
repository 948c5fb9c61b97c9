"""The no-network grid: N real nodes in one ``trio.run``, over the memory transport.

Every node is a real :class:`~shardnet.node._runtime.NodeRuntime`: real
services, crypto, Cedar and SQLite (in memory). Only the network is the
:class:`~shardnet.simulations._memory.MemoryNetwork`, with its latency
function, loss and partitions. Run it under ``trio.testing.MockClock``
(``autojump_threshold=0``) and no wall-clock time is waited for.

Determinism: the same seed gives the same event trace, the sequence of
(virtual time, node, event kind, peer, frame length) the network records.
Everything a node draws comes from the grid's seeded RNG, and trio's own
scheduler tie-breaks are made deterministic and seeded, the way trio's
Hypothesis plugin does it: tasks that become runnable together are sorted by
creation and shuffled with ``trio._core._run._r`` seeded from the grid's seed.
Both are put back when the grid stops.
The trace holds lengths, not bytes: HPKE's ephemeral keys come from the
library. Within one process; across processes set ``PYTHONHASHSEED`` as well.

The nodes form one network whose sole authority is node 0 (K = 1), and all
of them are admitted before the grid starts: each node's store is seeded with
the genesis and every admission, as if it had pulled them (the records a node
stored are not verified again when it starts, as on a real restart). A
scenario admits more, or revokes, through the nodes' own commands
(``admit``, ``member-revoke``), over the memory network.

Use::

    grid = Grid(tmp_path, 20, latency=lambda a, b: 0.05, seed=1)
    async with grid.running():
        await grid.wait_directory()
        keyset = await grid.import_key(0, b"master", 3, 5)
        assert await grid.reconstruct(0, keyset) == b"master"
"""

from __future__ import annotations

import base64
import pathlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import trio
import trio.testing
from trio._core import _run  # the scheduler's tie-break RNG (see the module docstring)

from shardnet import protocol as p
from shardnet.node import _api
from shardnet.node._control_server import ControlError
from shardnet.node._home import Home, init_home
from shardnet.node._keystore import FileKeystore
from shardnet.node._runtime import NodeRuntime
from shardnet.node._store import Store

from ._drbg import Drbg
from ._memory import MemoryNetwork

EPOCH = 1_800_000_000  # virtual wall-clock time at the start of every grid run
COUNTRIES = ["CH", "JP", "BR", "AU", "DE", "US", "IN", "ZA", "CA", "NO", "SG", "KE", "MX", "FR", "KR",
             "NZ", "AR", "EG", "SE", "ID"]


class Place(Protocol):
    """Where a node is: a topology's site has these."""

    @property
    def name(self) -> str: ...
    @property
    def country(self) -> str: ...
    @property
    def city(self) -> str: ...
    @property
    def org(self) -> str: ...


class Grid:
    def __init__(self, root: pathlib.Path, n: int, *, latency: Callable[[str, str], float] | None = None,
                 lose: Callable[[str, str], bool] | None = None, seed: int = 0, degree: int = 6,
                 republish: float | None = None, trace: bool = True,
                 admitted: Callable[[int], bool] = lambda i: True, kems: tuple[str, ...] = ("x25519",),
                 cpu_clock: Callable[[], float] | None = None, charge: frozenset[str] = frozenset(),
                 charge_gossip: bool = False, autopilot: bool = False,
                 sites: Sequence[Place] | None = None) -> None:
        """``latency(a, b)``: one-way seconds from a to b. ``lose(a, b)``: whether this gossip
        hop or request from a to b is lost (called once per hop). ``republish``: seconds
        between a node's descriptor publications. ``trace``: keep the event trace (see
        MemoryNetwork). ``admitted(i)``: whether node i is admitted when the grid starts
        (node 0, the authority, always runs; the others it leaves out can be admitted later).
        ``kems``: the HPKE keys the admissions certify, so the KEMs imports may use.
        ``cpu_clock``, ``charge``: the handlers of these protocols have their compute time
        added as virtual delay (MemoryNetwork); ``charge_gossip``: so do gossip validators. ``autopilot``: the nodes run the epoch actions
        triggers call for by themselves (off by default: tests drive the actions).
        ``sites``: each node's name, country, city and org (a topology's); by default node i is
        ``node-i`` in ``COUNTRIES[i % 20]``, in an org of its own."""
        if n < 1:
            raise ValueError("a grid needs at least one node")
        if sites is not None and len(sites) != n:
            raise ValueError(f"{len(sites)} sites for {n} nodes")
        if republish is not None and not republish > 0:
            raise ValueError("the descriptor republish interval must be positive")
        self.root = pathlib.Path(root)
        self.seed = seed
        self.rng = Drbg(b"shardnet-grid" + seed.to_bytes(8, "big"))
        self.network = MemoryNetwork(latency=latency, lose=lose, degree=degree, seed=seed, trace=trace,
                                     cpu_clock=cpu_clock, charge=charge, charge_gossip=charge_gossip)
        self.republish = republish
        self.admitted = admitted
        self.kems = kems
        self.autopilot = autopilot
        self.genesis: p.Genesis | None = None
        self.homes: list[Home] = []
        for i in range(n):
            path = self.root / f"node-{i:04d}"
            if (path / "config.json").exists():
                home = Home(path)
            elif sites is None:
                home = init_home(path, name=f"node-{i:04d}", country=COUNTRIES[i % len(COUNTRIES)], rng=self.rng)
            else:
                s = sites[i]
                home = init_home(path, name=s.name, country=s.country, city=s.city, org=s.org, rng=self.rng)
            self.homes.append(home)
        self.nodes: list[NodeRuntime] = []
        self.stores: list[Store] = []
        self._nursery: trio.Nursery | None = None

    @property
    def trace(self) -> list[tuple[float, str, str, str, int]]:
        return self.network.trace

    def now(self) -> float:
        return EPOCH + trio.current_time()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Grid]:
        # Scheduler tie-breaks (see the module docstring): tasks made runnable together
        # run in creation order, shuffled by a seeded RNG, as under Hypothesis. Both are
        # trio internals (trio is pinned exactly), put back as they were when the grid stops.
        saved = (_run._ALLOW_DETERMINISTIC_SCHEDULING, _run._r.getstate())
        _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
        _run._r.seed(self.seed)
        try:
            async with self._nodes_running():
                yield self
        finally:
            _run._ALLOW_DETERMINISTIC_SCHEDULING = saved[0]  # type: ignore[misc]
            _run._r.setstate(saved[1])

    @asynccontextmanager
    async def _nodes_running(self) -> AsyncIterator[None]:
        first = self.homes[0].peer_id()
        boot = [f"/memory/{first}/p2p/{first}"]
        g, records = network_of(self.homes, self.admitted, self.kems)
        self.genesis = g
        self._boot = boot
        self.stores = [seeded(Store(":memory:"), g, records) for _ in self.homes]
        self.nodes = [self._runtime(i) for i in range(len(self.homes))]
        try:
            async with self.network.running(), trio.open_nursery() as nursery:
                self._nursery = nursery
                for node in self.nodes:
                    await nursery.start(node.run)
                try:
                    yield None
                finally:
                    self._nursery = None
                    for node in self.nodes:
                        node.stop()
        finally:
            for store in self.stores:  # the nodes' disks: the grid's to close, once they stopped
                store.close()

    def _runtime(self, i: int) -> NodeRuntime:
        h = self.homes[i]
        return NodeRuntime(h, keystore=FileKeystore.from_home(h), transport=self.network.factory(),
                           bootstrap=self._boot if i else [], clock=self.now, rng=self.rng, store=self.stores[i],
                           operator_io=False, republish_every=self.republish, autopilot=self.autopilot)

    # -- faults ----------------------------------------------------------------------

    async def crash(self, i: int) -> None:
        """Node i stops at once: its connections drop and its tasks end. Its store (its disk)
        is kept, as a crashed process keeps its files; what it held in memory is lost."""
        node = self.nodes[i]
        node.stop()
        for _ in range(6000):
            if not self.network.nodes[node.peer_id].up:
                return
            await trio.sleep(0.01)
        raise RuntimeError(f"node {i} did not stop within 60 s")

    async def restart(self, i: int) -> None:
        """Node i starts again from its home and its store, as after a crash."""
        if self._nursery is None:
            raise RuntimeError("the grid is not running")
        if self.network.nodes[self.nodes[i].peer_id].up:
            raise RuntimeError(f"node {i} is running")
        self.nodes[i] = self._runtime(i)
        await self._nursery.start(self.nodes[i].run)

    # -- what scenarios do ---------------------------------------------------------

    async def wait_directory(self, *, within: float = 600.0) -> float:
        """Until every admitted node knows every admitted node; the virtual seconds it took."""
        t0 = trio.current_time()
        members = [node for i, node in enumerate(self.nodes) if self.admitted(i)]
        n = len(members)
        await _until(lambda: all(len(node.directory) >= n for node in members), within)
        return trio.current_time() - t0

    def admit_key(self, key: p.Signer, *, country: str = "CH") -> None:
        """Admit a key that is no node of the grid (a test's own peer) on every node at once."""
        body = admission_body(self.genesis_or_fail(), p.peer_id_of(key.public_key().public_bytes_raw()),
                              {"x25519": b"\x01" * 32}, name="outside", org="outside", country=country)
        data = p.CoSigned.propose(self.homes[0].identity(), body).to_bytes()
        for node in self.nodes:
            node.members.accept(data, node.now())

    def genesis_or_fail(self) -> p.Genesis:
        if self.genesis is None:
            raise RuntimeError("the grid is not running")
        return self.genesis

    def index(self, peer_id: str) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.peer_id == peer_id)

    async def import_key(self, owner: int, key: bytes, threshold: int, shares: int, *,
                         all_delivered: bool = True, **extra: Any) -> str:
        """Import from node ``owner``; with ``all_delivered``, fail unless every shard was
        delivered within the import's wait (``wait=`` seconds, 30 by default)."""
        res = await self.nodes[owner].commands()["key-import"](
            {"key": base64.b64encode(key).decode(), "threshold": threshold, "shares": shares, **extra}, _quiet)
        states = [s["state"] for s in res["shards"]]
        if all_delivered and states != ["delivered"] * len(states):
            raise AssertionError(f"import did not deliver every shard: {states}")
        return str(res["keyset"])

    def shards(self, owner: int, keyset: str) -> list[dict[str, Any]]:
        """The owner's view of each shard of ``keyset``: custodian, country, state, ..."""
        return list(_api.keyset_detail(self.nodes[owner].store, keyset)["shards"])

    async def reconstruct(self, requester: int, keyset: str, *, within: float = 120.0,
                          mode: str = "unwrap", approve: Callable[[int], bool] = lambda i: True,
                          reason: str = "grid") -> bytes:
        """Ask for the key from one node; the approvers of the keyset that ``approve(i)``
        approve. Raises the node's ControlError when the round fails."""
        asker = self.nodes[requester]
        # The approvers, from any node holding the record (the asker may never have seen it).
        record = next(held["record"] for node in [asker, *self.nodes] if (held := node.store.keyset(keyset)))
        approvers = p.ApprovalRule.of(p.Keyset.from_bytes(record)).approvers
        voters = [node for i, node in enumerate(self.nodes) if node.peer_id in approvers and approve(i)]
        result: dict[str, Any] = {}

        async def ask() -> None:
            try:
                result.update(await asker.commands()["key-reconstruct"](
                    {"keyset": keyset, "timeout": within, "reason": reason, "mode": mode}, _quiet))
            except ControlError as exc:  # the round failed: raised below, as itself
                result["error"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            voted: set[str] = set()
            for _ in range(int(within * 10)):
                if result:
                    break
                for node in voters:
                    if node.peer_id in voted:
                        continue
                    for row in node.approvals.listing(node.now()):  # this asker's requests only
                        if (row["keyset"] == keyset and row["approver"] and row["my_vote"] is None
                                and row["requester"] == asker.peer_id and row["state"] == "pending"):
                            await node.commands()["approve"]({"request": row["request"]}, _quiet)
                            voted.add(node.peer_id)
                await trio.sleep(0.1)
        if "error" in result:
            raise result["error"]
        return base64.b64decode(result["key"])


def admission_body(g: p.Genesis, peer: str, hpke: dict[str, bytes], *, name: str, org: str,
                   country: str, city: str = "", at: int = EPOCH) -> bytes:
    return p.Admission.make_body(network_id=g.network_id, peer_id=peer, hpke=hpke, roles=["approver", "custodian"],
                                 name=name, org=org, country=country, city=city, issued=at,
                                 not_after=at + 365 * 86400)


def network_of(homes: list[Home], admitted: Callable[[int], bool] = lambda i: True,
               kems: tuple[str, ...] = ("x25519",), at: int = EPOCH) -> tuple[p.Genesis, list[p.CoSigned]]:
    """A network whose sole authority is the first home (K = 1), and the admission of
    every home ``admitted(i)``, with its config's attributes and its HPKE keys for
    ``kems``. Each node holds every admission: certifying an ML-KEM-768 key (1,216
    bytes) that a scenario never seals to would cost a 1,000-node grid gigabytes. ``at``: when
    it is made (the grid's virtual time; real processes read the system clock)."""
    authority = homes[0].identity()
    g = p.Genesis.make(authority, name="grid", authorities=[], quorum=1, created=at)
    records = []
    for i, h in enumerate(homes):
        if admitted(i):
            cfg = h.config()
            keys = {k: v for k, v in FileKeystore.from_home(h).hpke_public().items() if k in kems}
            body = admission_body(g, h.peer_id(), keys, name=cfg["name"],
                                  org=cfg.get("org") or f"org-{i:04d}", country=cfg["country"],
                                  city=cfg.get("city") or "", at=at)
            records.append(p.CoSigned.propose(authority, body))
    return g, records


def seeded(store: Store, g: p.Genesis, records: list[p.CoSigned], at: int = EPOCH) -> Store:
    """``store``, joined to ``g`` and holding ``records``, as if it had pulled them at ``at``."""
    store.set_network(g.network_id, g.signed, now=at)
    with store.transaction():
        for cs in records:
            rec = p.Admission.from_body(cs.body)
            store.put_membership(rec.peer_id, "admission", cs.id, cs.to_bytes(), time=rec.issued, now=at)
    return store


async def _quiet(event: dict[str, Any]) -> None:
    return None


async def _until(cond: Callable[[], bool], within: float) -> None:
    for _ in range(int(within / 0.25)):
        if cond():
            return
        await trio.sleep(0.25)
    if not cond():
        raise AssertionError(f"not within {within} virtual seconds")


T = TypeVar("T")


def run_virtual(main: Callable[[str], Awaitable[T]], *, prefix: str) -> tuple[T, float]:
    """``main(root)`` in virtual time (a MockClock that jumps whenever all tasks wait), in a
    temporary directory ``root``; what it returned, and the wall seconds it took."""
    w0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        out = trio.run(main, root, clock=trio.testing.MockClock(autojump_threshold=0))
    return out, time.perf_counter() - w0


__all__ = ["EPOCH", "Grid", "network_of", "run_virtual", "seeded"]
