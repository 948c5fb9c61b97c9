"""Real node runtimes in one trio.run over the in-memory network (simulations/_memory.py).

Real services, crypto, SQLite and Cedar; only the network is simulated, and
time is virtual (trio's autojump MockClock): three custodians find each
other, a key is imported, two approve, and it comes back byte for byte.
"""

from __future__ import annotations

import base64
import pathlib
from typing import Any

import trio

from shardnet.node._home import init_home
from shardnet.node._keystore import FileKeystore
from shardnet.node._runtime import NodeRuntime
from shardnet.simulations._memory import MemoryNetwork
from shardnet.simulations.grid import network_of, seeded

from .drbg import Drbg

EPOCH = 1_800_000_000
NODES = [("zurich", "CH"), ("tokyo", "JP"), ("lima", "PE")]
KEY = b"a master key of thirty-two bytes"


async def until(cond: Any, seconds: float) -> None:
    for _ in range(int(seconds / 0.1)):
        if cond():
            return
        await trio.sleep(0.1)
    raise AssertionError(f"not within {seconds} virtual seconds")


async def test_three_nodes_import_and_reconstruct_over_memory(tmp_path: pathlib.Path, autojump_clock: Any) -> None:
    net = MemoryNetwork(latency=lambda a, b: 0.040, seed=7)
    rng = Drbg(b"memory-net")
    homes = [init_home(tmp_path / name, name=name, country=cc, rng=rng) for name, cc in NODES]
    g, records = network_of(homes)
    for h in homes:
        with h.open_store() as store:
            seeded(store, g, records)
    first = homes[0].peer_id()
    boot = [f"/memory/{first}/p2p/{first}"]
    runtimes = [NodeRuntime(h, keystore=FileKeystore.from_home(h), transport=net.factory(),
                            bootstrap=boot if i else [], clock=lambda: EPOCH + trio.current_time(), rng=rng)
                for i, h in enumerate(homes)]
    events: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        events.append(event)

    async with net.running(), trio.open_nursery() as nursery:
        for rt in runtimes:
            await nursery.start(rt.run)
        await until(lambda: all(len(rt.store.custodians()) == 3 for rt in runtimes), 60)
        zurich, tokyo, lima = runtimes
        imported = await zurich.commands()["key-import"](
            {"key": base64.b64encode(KEY).decode(), "threshold": 2, "shares": 3,
             "placement": "distinct:country"}, emit)
        assert [s["state"] for s in imported["shards"]] == ["delivered"] * 3
        result: dict[str, Any] = {}

        async def reconstruct() -> None:
            result.update(await zurich.commands()["key-reconstruct"](
                {"keyset": imported["keyset"], "timeout": 60, "reason": "drill"}, emit))

        nursery.start_soon(reconstruct)
        await until(lambda: any(r["my_vote"] is None for r in tokyo.approvals.listing(tokyo.now())), 30)
        for rt in (tokyo, lima):
            await until(lambda rt=rt: rt.approvals.listing(rt.now()), 30)
            rid = rt.approvals.listing(rt.now())[0]["request"]
            await rt.commands()["approve"]({"request": rid}, emit)
        await until(lambda: bool(result), 60)
        assert base64.b64decode(result["key"]) == KEY and result["invalid"] == []
        for rt in runtimes:
            rt.stop()
    # Every node took gossip (descriptors, the request, votes) through its validator, and the
    # three deliveries and the release asks were requests.
    peers = {rt.peer_id for rt in runtimes}
    assert {n for _, n, k, _, _ in net.trace if k == "gossip"} == peers
    assert sum(k == "request" for _, _, k, _, _ in net.trace) >= 3 + 2
    assert trio.current_time() < 120  # virtual seconds: the loops' own pacing, not wall time
